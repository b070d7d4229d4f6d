//! `millrace top`: a refreshing view of streams, groups, lag, pending entries and rates.
//!
//! Rates come from two samples: entries added per second from `XINFO STREAM`'s `entries-added`,
//! entries read per second per group from `XINFO GROUPS`' `entries-read` (both Redis 7.0+).
//! `--once` takes two samples one interval apart and prints one snapshot.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::TopArgs;
use crate::connect::Redis;
use crate::error::Result;
use crate::info::{self, GroupInfo, StreamInfo};
use crate::render::{self, escape, opt, Align, JsonBytes, Table};

/// ANSI: cursor home, clear screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

#[derive(Debug)]
struct Sample {
    at: Instant,
    streams: Vec<(Vec<u8>, StreamInfo, Vec<GroupInfo>)>,
}

#[derive(Debug, Serialize)]
struct Snapshot {
    interval_ms: u64,
    streams: Vec<StreamRow>,
}

#[derive(Debug, Serialize)]
struct StreamRow {
    stream: JsonBytes,
    length: u64,
    entries_added: Option<u64>,
    /// Entries added per second over the last interval.
    added_per_sec: Option<f64>,
    groups: Vec<GroupRow>,
}

#[derive(Debug, Serialize)]
struct GroupRow {
    group: JsonBytes,
    consumers: u64,
    pending: u64,
    lag: Option<u64>,
    entries_read: Option<u64>,
    /// Entries read per second over the last interval.
    read_per_sec: Option<f64>,
}

/// Shows the view until Ctrl-C, or one snapshot with `--once`.
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &TopArgs) -> Result<()> {
    let pattern = args.pattern.as_deref();
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut prev = sample(redis, pattern).await?;
    if !args.once {
        show(redis, json, args, &snapshot(None, &prev, args.interval))?;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
        let cur = sample(redis, pattern).await?;
        show(
            redis,
            json,
            args,
            &snapshot(Some(&prev), &cur, args.interval),
        )?;
        if args.once {
            return Ok(());
        }
        prev = cur;
    }
}

async fn sample(redis: &mut Redis, pattern: Option<&str>) -> Result<Sample> {
    let mut streams = Vec::new();
    for key in info::scan_streams(redis, pattern).await? {
        let Some(stream) = info::stream(redis, &key).await? else {
            continue;
        };
        let groups = info::groups_if_stream(redis, &key)
            .await?
            .unwrap_or_default();
        streams.push((key, stream, groups));
    }
    Ok(Sample {
        at: Instant::now(),
        streams,
    })
}

fn rate(before: Option<u64>, after: Option<u64>, secs: f64) -> Option<f64> {
    let (b, a) = (before?, after?);
    if a < b || secs <= 0.0 {
        return None;
    }
    Some(((a - b) as f64 / secs * 10.0).round() / 10.0)
}

fn snapshot(prev: Option<&Sample>, cur: &Sample, interval: Duration) -> Snapshot {
    let secs = prev.map_or(0.0, |p| cur.at.duration_since(p.at).as_secs_f64());
    let before: HashMap<&[u8], (&StreamInfo, &[GroupInfo])> = prev
        .map(|p| {
            p.streams
                .iter()
                .map(|(k, s, g)| (k.as_slice(), (s, g.as_slice())))
                .collect()
        })
        .unwrap_or_default();
    let streams = cur
        .streams
        .iter()
        .map(|(key, s, groups)| {
            let old = before.get(key.as_slice());
            StreamRow {
                stream: JsonBytes(key.clone()),
                length: s.length,
                entries_added: s.entries_added,
                added_per_sec: old.and_then(|(o, _)| rate(o.entries_added, s.entries_added, secs)),
                groups: groups
                    .iter()
                    .map(|g| {
                        let old_read = old
                            .and_then(|(_, og)| og.iter().find(|o| o.name == g.name))
                            .and_then(|o| o.entries_read);
                        GroupRow {
                            group: JsonBytes(g.name.clone()),
                            consumers: g.consumers,
                            pending: g.pending,
                            lag: g.lag,
                            entries_read: g.entries_read,
                            read_per_sec: rate(old_read, g.entries_read, secs),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Snapshot {
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        streams,
    }
}

fn show(redis: &Redis, json: bool, args: &TopArgs, snap: &Snapshot) -> Result<()> {
    if json {
        return if args.once {
            render::json(snap)
        } else {
            render::json_line(snap)
        };
    }
    let mut text = String::new();
    if !args.once && std::io::stdout().is_terminal() {
        text.push_str(CLEAR);
    }
    text.push_str(&format!(
        "millrace top  {}  every {}{}\n\n",
        redis.target,
        render::duration(args.interval),
        if args.once { "" } else { "  (Ctrl-C to quit)" }
    ));
    if snap.streams.is_empty() {
        text.push_str("no streams\n");
        return render::out(&text);
    }
    let per_sec = |r: Option<f64>| r.map_or_else(|| "?".to_owned(), |r| format!("{r:.1}"));
    let mut table = Table::new(&[
        ("STREAM", Align::Left),
        ("LENGTH", Align::Right),
        ("IN/S", Align::Right),
        ("GROUP", Align::Left),
        ("CONSUMERS", Align::Right),
        ("PENDING", Align::Right),
        ("LAG", Align::Right),
        ("READ/S", Align::Right),
    ]);
    for s in &snap.streams {
        let head = vec![
            escape(&s.stream.0),
            s.length.to_string(),
            per_sec(s.added_per_sec),
        ];
        if s.groups.is_empty() {
            let mut row = head.clone();
            row.extend(["-", "", "", "", ""].map(String::from));
            table.row(row);
        }
        for (i, g) in s.groups.iter().enumerate() {
            let mut row = if i == 0 {
                head.clone()
            } else {
                vec![String::new(), String::new(), String::new()]
            };
            row.extend([
                escape(&g.group.0),
                g.consumers.to_string(),
                g.pending.to_string(),
                opt(g.lag),
                per_sec(g.read_per_sec),
            ]);
            table.row(row);
        }
    }
    text.push_str(&table.render());
    render::out(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_two_ordered_samples() {
        assert_eq!(rate(Some(10), Some(30), 2.0), Some(10.0));
        assert_eq!(rate(None, Some(30), 2.0), None);
        assert_eq!(rate(Some(30), Some(10), 2.0), None);
        assert_eq!(rate(Some(1), Some(2), 0.0), None);
    }
}
