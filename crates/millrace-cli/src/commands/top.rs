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

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, queue, terminal};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::{SortBy, TopArgs};
use crate::connect::Redis;
use crate::error::{CliError, Result};
use crate::info::{self, GroupInfo, StreamInfo};
use crate::render::{self, escape, opt, Align, JsonBytes, Table};

mod pattern;
use pattern::{PatternSummary, SkippedKey};

/// The table's columns, in order, with the sort key each stands for.
const COLUMNS: [(&str, Align, SortBy); 10] = [
    ("STREAM", Align::Left, SortBy::Stream),
    ("LENGTH", Align::Right, SortBy::Length),
    ("IN/S", Align::Right, SortBy::In),
    ("DLQ", Align::Right, SortBy::Dlq),
    ("GROUP", Align::Left, SortBy::Stream),
    ("CONSUMERS", Align::Right, SortBy::Consumers),
    ("PENDING", Align::Right, SortBy::Pending),
    ("OLDEST-IDLE", Align::Right, SortBy::OldestIdle),
    ("LAG", Align::Right, SortBy::Lag),
    ("READ/S", Align::Right, SortBy::Read),
];

/// The sort keys behind keys `1`-`9` on the screen, in column order.
const SORT_KEYS: [SortBy; 9] = [
    SortBy::Stream,
    SortBy::Length,
    SortBy::In,
    SortBy::Dlq,
    SortBy::Consumers,
    SortBy::Pending,
    SortBy::OldestIdle,
    SortBy::Lag,
    SortBy::Read,
];

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

/// The terminal in raw mode on the alternate screen, for as long as this lives (also after an
/// error or a panic, since the screen is restored on drop).
struct Screen {
    stop_keys: Arc<AtomicBool>,
}

impl Screen {
    fn enter() -> Result<(Screen, mpsc::Receiver<KeyEvent>)> {
        terminal::enable_raw_mode()?;
        let screen = Screen {
            stop_keys: Arc::new(AtomicBool::new(false)),
        };
        let mut out = std::io::stdout();
        queue!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
        out.flush()?;
        // Keys are read on a thread of their own: crossterm's reads block.
        let (tx, rx) = mpsc::channel(16);
        let stop = screen.stop_keys.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match crossterm::event::poll(Duration::from_millis(100)) {
                    Ok(false) => {}
                    Ok(true) => match crossterm::event::read() {
                        Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                            if tx.blocking_send(key).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    Err(_) => return,
                }
            }
        });
        Ok((screen, rx))
    }

    /// Redraws in place: every line is overwritten and cleared to its end, then the rest of the
    /// screen is cleared, so nothing is ever blanked first.
    fn draw(&self, text: &str) -> Result<()> {
        // A terminal that does not report its size (0 x 0) gets every line, uncut.
        let (width, height) = match terminal::size() {
            Ok((w, h)) if w > 0 && h > 0 => (w, h),
            _ => (u16::MAX, u16::MAX),
        };
        let mut out = std::io::stdout().lock();
        for (row, line) in text.lines().take(usize::from(height)).enumerate() {
            let line: String = line.chars().take(usize::from(width)).collect();
            queue!(
                out,
                cursor::MoveTo(0, u16::try_from(row).unwrap_or(u16::MAX)),
                crossterm::style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
        }
        queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.stop_keys.store(true, Ordering::Relaxed);
        let mut out = std::io::stdout();
        let _ = queue!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = out.flush();
        let _ = terminal::disable_raw_mode();
    }
}

/// What a key asks for.
enum KeyAction {
    Quit,
    Interrupt,
    Sort(SortBy),
    Nothing,
}

fn key_action(key: &KeyEvent) -> KeyAction {
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => KeyAction::Interrupt,
        KeyCode::Char('q') | KeyCode::Esc => KeyAction::Quit,
        KeyCode::Char(c @ '1'..='9') => {
            let i = usize::from(c as u8 - b'1');
            KeyAction::Sort(SORT_KEYS[i])
        }
        _ => KeyAction::Nothing,
    }
}

async fn run_on_screen(redis: &mut Redis, args: &TopArgs) -> Result<()> {
    let mut sort = args.sort;
    let mut prev = sample(redis, args).await?;
    // Ctrl-C arrives as a key in raw mode; a SIGINT from elsewhere must restore the screen too.
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let (screen, mut keys) = Screen::enter()?;
    let mut snap = snapshot(None, &prev, args);
    let mut next = Instant::now() + args.interval;
    loop {
        screen.draw(&screen_text(redis, args, sort, &snap))?;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                next = Instant::now() + args.interval;
                let cur = sample(redis, args).await?;
                snap = snapshot(Some(&prev), &cur, args);
                prev = cur;
            }
            _ = &mut ctrl_c => return Err(CliError::interrupted()),
            key = keys.recv() => match key.as_ref().map(key_action) {
                None | Some(KeyAction::Quit) => return Ok(()),
                Some(KeyAction::Interrupt) => return Err(CliError::interrupted()),
                Some(KeyAction::Sort(by)) => sort = by,
                Some(KeyAction::Nothing) => {}
            },
        }
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

/// One table row: a group of a stream, or a stream without groups.
struct Line<'a> {
    stream: &'a StreamRow,
    group: Option<&'a GroupRow>,
}

impl Line<'_> {
    /// The value sorted on, for the numeric columns.
    fn number(&self, by: SortBy) -> Option<f64> {
        let g = self.group;
        let n = |v: Option<u64>| v.map(|v| v as f64);
        match by {
            SortBy::Stream => None,
            SortBy::Length => n(Some(self.stream.length)),
            SortBy::In => self.stream.added_per_sec,
            SortBy::Dlq => n(self.stream.dead_letters),
            SortBy::Consumers => n(g.map(|g| g.consumers)),
            SortBy::Pending => n(g.map(|g| g.pending)),
            SortBy::OldestIdle => n(g.and_then(|g| g.oldest_pending_idle_ms)),
            SortBy::Lag => n(g.and_then(|g| g.lag)),
            SortBy::Read => g.and_then(|g| g.read_per_sec),
        }
    }

    fn names(&self) -> (&[u8], &[u8]) {
        (
            &self.stream.stream.0,
            self.group.map_or(&[][..], |g| &g.group.0),
        )
    }
}

/// The rows in `sort` order: names A to Z, numbers largest first (unknown last), then by name.
fn lines(snap: &Snapshot, sort: SortBy) -> Vec<Line<'_>> {
    let mut lines: Vec<Line<'_>> = snap
        .streams
        .iter()
        .flat_map(|s| {
            let groups: Vec<Option<&GroupRow>> = if s.groups.is_empty() {
                vec![None]
            } else {
                s.groups.iter().map(Some).collect()
            };
            groups
                .into_iter()
                .map(move |group| Line { stream: s, group })
        })
        .collect();
    lines.sort_by(|a, b| {
        let by_value = match (a.number(sort), b.number(sort)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_value.then_with(|| a.names().cmp(&b.names()))
    });
    lines
}

fn table(snap: &Snapshot, sort: SortBy) -> String {
    let per_sec = |r: Option<f64>| r.map_or_else(|| "?".to_owned(), |r| format!("{r:.1}"));
    let headers: Vec<(String, Align)> = COLUMNS
        .iter()
        .map(|(name, align, by)| {
            let marked = *by == sort && *name != "GROUP";
            (
                if marked {
                    format!("{name}▼")
                } else {
                    (*name).to_owned()
                },
                *align,
            )
        })
        .collect();
    let mut columns: Vec<(&str, Align)> = headers.iter().map(|(h, a)| (h.as_str(), *a)).collect();
    // On a cluster, which master holds each stream, right after its name.
    let cluster = snap.streams.iter().any(|s| s.master.is_some());
    if cluster {
        columns.insert(1, ("MASTER", Align::Left));
    }
    let mut table = Table::new(&columns);
    for line in lines(snap, sort) {
        let s = line.stream;
        let mut row = vec![
            escape(&s.stream.0),
            s.length.to_string(),
            per_sec(s.added_per_sec),
            s.dead_letters
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ];
        if cluster {
            row.insert(1, opt(s.master.as_deref()));
        }
        match line.group {
            None => row.push("-".to_owned()),
            Some(g) => row.extend([
                escape(&g.group.0),
                g.consumers.to_string(),
                g.pending.to_string(),
                g.oldest_pending_idle_ms
                    .map_or_else(|| "-".to_owned(), render::millis),
                opt(g.lag),
                per_sec(g.read_per_sec),
            ]),
        }
        table.row(row);
    }
    table.render()
}

fn screen_text(redis: &Redis, args: &TopArgs, sort: SortBy, snap: &Snapshot) -> String {
    let mut text = format!(
        "millrace top  {}  every {}  (q quit, 1-9 sort)\n\n",
        redis.target,
        render::duration(args.interval),
    );
    if let Some(pattern) = &snap.pattern {
        text.push_str(&format!("{}\n\n", pattern.line()));
    }
    if snap.streams.is_empty() {
        text.push_str("no streams\n");
    } else {
        text.push_str(&table(snap, sort));
    }
    text
}

fn print(redis: &Redis, json: bool, args: &TopArgs, snap: &Snapshot) -> Result<()> {
    if json {
        return if args.once {
            render::json(snap)
        } else {
            render::json_line(snap)
        };
    }
    let mut text = format!(
        "millrace top  {}  every {}{}\n\n",
        redis.target,
        render::duration(args.interval),
        if args.once { "" } else { "  (Ctrl-C to quit)" }
    );
    if let Some(pattern) = &snap.pattern {
        text.push_str(&format!("{}\n\n", pattern.line()));
    }
    if snap.streams.is_empty() {
        text.push_str("no streams\n");
    } else {
        text.push_str(&table(snap, args.sort));
    }
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

    fn group(name: &str, pending: u64, idle: Option<u64>) -> GroupRow {
        GroupRow {
            group: JsonBytes(name.into()),
            consumers: 1,
            pending,
            oldest_pending_idle_ms: idle,
            lag: None,
            entries_read: None,
            read_per_sec: None,
        }
    }

    fn stream(name: &str, length: u64, groups: Vec<GroupRow>) -> StreamRow {
        StreamRow {
            stream: JsonBytes(name.into()),
            master: None,
            length,
            entries_added: None,
            added_per_sec: None,
            dead_letters: None,
            groups,
        }
    }

    #[test]
    fn rows_sort_by_the_chosen_column_largest_first() {
        let snap = Snapshot {
            interval_ms: 1000,
            pattern: None,
            streams: vec![
                stream("a", 5, vec![group("g1", 1, Some(10)), group("g2", 7, None)]),
                stream("b", 9, vec![group("g", 3, Some(500))]),
                stream("c", 1, vec![]),
            ],
        };
        let order = |by| {
            lines(&snap, by)
                .iter()
                .map(|l| {
                    let (s, g) = l.names();
                    format!(
                        "{}/{}",
                        String::from_utf8_lossy(s),
                        String::from_utf8_lossy(g)
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(order(SortBy::Stream), ["a/g1", "a/g2", "b/g", "c/"]);
        assert_eq!(order(SortBy::Pending), ["a/g2", "b/g", "a/g1", "c/"]);
        assert_eq!(order(SortBy::OldestIdle), ["b/g", "a/g1", "a/g2", "c/"]);
        assert_eq!(order(SortBy::Length), ["b/g", "a/g1", "a/g2", "c/"]);
    }

    #[test]
    fn keys_quit_interrupt_and_sort() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(matches!(
            key_action(&key(KeyCode::Char('q'), KeyModifiers::NONE)),
            KeyAction::Quit
        ));
        assert!(matches!(
            key_action(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            KeyAction::Interrupt
        ));
        assert!(matches!(
            key_action(&key(KeyCode::Char('6'), KeyModifiers::NONE)),
            KeyAction::Sort(SortBy::Pending)
        ));
    }
}
