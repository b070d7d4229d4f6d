//! `millrace top`: a refreshing view of streams, groups, lag, pending entries and rates.
//!
//! Rates come from two samples: entries added per second from `XINFO STREAM`'s `entries-added`,
//! entries read per second per group from `XINFO GROUPS`' `entries-read` (both Redis 7.0+). Each
//! group also shows how long its oldest pending entry has been idle (`XPENDING ... 1`), and each
//! stream the length of its dead-letter stream `<stream>:dlq`. `--once` takes two samples one
//! interval apart and prints one snapshot.
//!
//! With a pattern every matching key is looked at, so the keys that are not streams are named and
//! counted in a header line (they are skipped, as a pattern consumer skips them); `--group` shows
//! that group's rows only, and a matching stream without the group a row with `-`, so the streams a
//! pattern consumer reads and the ones it has not picked up show side by side ([`pattern`]).
//!
//! On a cluster the streams of every master are shown together, each with the master that holds
//! it (a `MASTER` column, `master` in JSON); every other call goes to the stream's master.
//!
//! On a terminal the view runs on the alternate screen (the shell's screen comes back on exit) and
//! is redrawn in place, line by line, so it does not flicker; `q` or Esc quits, keys `1`-`9` sort by
//! a column. Elsewhere (a pipe, `--json`) each refresh is printed after the last.
//!
//! Here the samples and the snapshot made of two; the screen is in `screen`, the table and the
//! printing in `table`, the pattern's header in `pattern`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

use serde::Serialize;

use crate::cli::TopArgs;
use crate::connect::Redis;
use crate::error::{CliError, Result};
use crate::info::{self, GroupInfo, StreamInfo};
use crate::render::{self, JsonBytes};

mod pattern;
mod screen;
mod table;

use pattern::{PatternSummary, SkippedKey};
use screen::run_on_screen;
use table::print;

#[derive(Debug)]
struct Sample {
    at: Instant,
    streams: Vec<StreamSample>,
    /// With a pattern: the matching keys that are not streams.
    skipped: Vec<SkippedKey>,
}

#[derive(Debug)]
struct StreamSample {
    key: Vec<u8>,
    /// On a cluster, the master the stream was found on (`host:port`).
    master: Option<String>,
    info: StreamInfo,
    dead_letters: Option<u64>,
    groups: Vec<(GroupInfo, Option<u64>)>,
}

#[derive(Debug, Serialize)]
struct Snapshot {
    interval_ms: u64,
    /// With a pattern: how many keys match, and which are skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<PatternSummary>,
    streams: Vec<StreamRow>,
}

#[derive(Debug, Serialize)]
struct StreamRow {
    stream: JsonBytes,
    /// On a cluster, the master that holds the stream (`host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    master: Option<String>,
    length: u64,
    entries_added: Option<u64>,
    /// Entries added per second over the last interval.
    added_per_sec: Option<f64>,
    /// Entries in `<stream>:dlq` (absent when there is no such stream).
    dead_letters: Option<u64>,
    groups: Vec<GroupRow>,
}

#[derive(Debug, Serialize)]
struct GroupRow {
    group: JsonBytes,
    consumers: u64,
    pending: u64,
    /// How long the oldest pending entry has been idle (absent when nothing is pending).
    oldest_pending_idle_ms: Option<u64>,
    lag: Option<u64>,
    entries_read: Option<u64>,
    /// Entries read per second over the last interval.
    read_per_sec: Option<f64>,
}

/// Shows the view until `q` or Ctrl-C (exit 130), or one snapshot with `--once`.
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &TopArgs) -> Result<()> {
    let interactive =
        !json && !args.once && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if interactive {
        return run_on_screen(redis, args).await;
    }
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut prev = sample(redis, args).await?;
    if !args.once {
        print(redis, json, args, &snapshot(None, &prev, args))?;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut ctrl_c => return Err(CliError::interrupted()),
        }
        let cur = sample(redis, args).await?;
        print(redis, json, args, &snapshot(Some(&prev), &cur, args))?;
        if args.once {
            return Ok(());
        }
        prev = cur;
    }
}

async fn sample(redis: &mut Redis, args: &TopArgs) -> Result<Sample> {
    let mut streams = Vec::new();
    let mut skipped = Vec::new();
    // With a pattern, keys of every type: those that are not streams are counted below.
    let found = match &args.pattern {
        Some(pattern) => info::scan_matching(redis, pattern).await?,
        None => info::scan_streams(redis, None).await?,
    };
    for found in found {
        let key = found.key;
        let Some(stream) = info::stream(redis, &key).await? else {
            if args.pattern.is_some() {
                let kind = redis.key_type(&key).await?;
                // Deleted since the scan (or a stream made since): not a skipped key.
                if kind != "none" && kind != "stream" {
                    skipped.push(SkippedKey {
                        key: JsonBytes(key),
                        kind,
                    });
                }
            }
            continue;
        };
        let mut groups = Vec::new();
        for g in info::groups_if_stream(redis, &key)
            .await?
            .unwrap_or_default()
            .into_iter()
            .filter(|g| pattern::shows_group(args.group.as_ref(), &g.name))
        {
            let idle = if g.pending > 0 {
                info::oldest_pending_idle(redis, &key, &g.name).await?
            } else {
                None
            };
            groups.push((g, idle));
        }
        let mut dlq = key.clone();
        dlq.extend_from_slice(b":dlq");
        let dead_letters = info::stream(redis, &dlq).await?.map(|s| s.length);
        streams.push(StreamSample {
            key,
            master: found.master,
            info: stream,
            dead_letters,
            groups,
        });
    }
    Ok(Sample {
        at: Instant::now(),
        streams,
        skipped,
    })
}

fn rate(before: Option<u64>, after: Option<u64>, secs: f64) -> Option<f64> {
    let (b, a) = (before?, after?);
    if a < b || secs <= 0.0 {
        return None;
    }
    Some(((a - b) as f64 / secs * 10.0).round() / 10.0)
}

fn snapshot(prev: Option<&Sample>, cur: &Sample, args: &TopArgs) -> Snapshot {
    let secs = prev.map_or(0.0, |p| cur.at.duration_since(p.at).as_secs_f64());
    let before: HashMap<&[u8], &StreamSample> = prev
        .map(|p| p.streams.iter().map(|s| (s.key.as_slice(), s)).collect())
        .unwrap_or_default();
    let streams = cur
        .streams
        .iter()
        .map(|s| {
            let old = before.get(s.key.as_slice());
            StreamRow {
                stream: JsonBytes(s.key.clone()),
                master: s.master.clone(),
                length: s.info.length,
                entries_added: s.info.entries_added,
                added_per_sec: old
                    .and_then(|o| rate(o.info.entries_added, s.info.entries_added, secs)),
                dead_letters: s.dead_letters,
                groups: s
                    .groups
                    .iter()
                    .map(|(g, idle)| {
                        let old_read = old
                            .and_then(|o| o.groups.iter().find(|(og, _)| og.name == g.name))
                            .and_then(|(og, _)| og.entries_read);
                        GroupRow {
                            group: JsonBytes(g.name.clone()),
                            consumers: g.consumers,
                            pending: g.pending,
                            oldest_pending_idle_ms: *idle,
                            lag: g.lag,
                            entries_read: g.entries_read,
                            read_per_sec: rate(old_read, g.entries_read, secs),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let pattern = args.pattern.as_ref().map(|pattern| PatternSummary {
        pattern: pattern.clone(),
        streams: cur.streams.len(),
        group: args
            .group
            .as_ref()
            .map(|g| JsonBytes(g.as_bytes().to_vec())),
        streams_with_group: args
            .group
            .as_ref()
            .map(|_| cur.streams.iter().filter(|s| !s.groups.is_empty()).count()),
        skipped: cur.skipped.clone(),
    });
    Snapshot {
        interval_ms: render::ms(args.interval),
        pattern,
        streams,
    }
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
