//! `top`'s rows as a table sorted by a column, and each refresh printed (text or JSON) where there
//! is no terminal to redraw.

use super::{GroupRow, Snapshot, StreamRow};
use crate::cli::{SortBy, TopArgs};
use crate::connect::Redis;
use crate::error::Result;
use crate::render::{self, escape, opt, Align, Table};

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

pub(super) fn table(snap: &Snapshot, sort: SortBy) -> String {
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

pub(super) fn print(redis: &Redis, json: bool, args: &TopArgs, snap: &Snapshot) -> Result<()> {
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
    use crate::commands::top::{GroupRow, Snapshot, StreamRow};
    use crate::render::JsonBytes;

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
}
