//! `millrace trim STREAM --maxlen N | --minid ID`: trim old entries, safely.
//!
//! The command first walks the entries that would go and checks every consumer group: it refuses
//! (exit 3) when a group has not yet been delivered some of them (id > its last-delivered-id) or
//! still holds some pending (a PEL entry at or below the cut), unless `--force`. It then trims with
//! `XTRIM MINID` at the successor of the last entry it checked, so entries added meanwhile are never
//! removed unchecked (with `--maxlen` the stream can end up slightly longer than N). Without
//! `--force` the trim itself is the library's checked trim ([`millrace::streams::trim_if_processed`]),
//! which re-checks every group atomically (cheaply: last-delivered-id at or past the cut, no pending
//! entry at or below it), so a group that changed during the walk (a new group at `0`,
//! `XGROUP SETID` backwards) cannot lose entries.

use millrace::streams::reply::PendingRow;
use millrace::streams::{successor, trim_if_processed, TrimVerdict};
use millrace::EntryId;
use redis::Value;
use serde::Serialize;

use crate::cli::TrimArgs;
use crate::connect::Redis;
use crate::error::{CliError, Result};
use crate::info::{self, GroupInfo};
use crate::key::Key;
use crate::render::{self, escape, Align, JsonBytes, Table};

/// Entries per XRANGE/XPENDING page.
pub(super) const PAGE: u64 = 1000;

#[derive(Debug, Serialize)]
struct GroupCheck {
    group: String,
    last_delivered_id: Option<String>,
    /// Entries that would go before the group was delivered them.
    undelivered: u64,
    /// Pending entries of the group at or below the cut.
    pending: u64,
    /// The oldest of those pending entries.
    oldest_pending: Option<String>,
}

#[derive(Debug, Serialize)]
struct TrimReport {
    stream: JsonBytes,
    length: u64,
    /// Entries that the trim removes (or would remove).
    remove: u64,
    first_removed: Option<String>,
    last_removed: Option<String>,
    /// `XTRIM MINID` threshold used: everything below it goes.
    threshold: Option<String>,
    /// Groups that would lose entries.
    unsafe_groups: Vec<GroupCheck>,
    refused: bool,
    forced: bool,
    dry_run: bool,
    /// Entries Redis removed (0 in a dry run or when refused).
    removed: u64,
}

/// Trims the stream (or says why not).
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &TrimArgs) -> Result<()> {
    let stream = &args.stream;
    let (length, groups) = length_and_groups(redis, stream).await?;

    // How many entries go, and where the walk stops.
    let (budget, end) = match (args.maxlen, args.minid) {
        (Some(n), _) => (Some(length.saturating_sub(n)), "+".to_owned()),
        // Nothing is below the smallest id (and `(0-0` is not a valid end for XRANGE).
        (None, Some(id)) if id == EntryId::MIN => (Some(0), "+".to_owned()),
        (None, Some(id)) => (None, format!("({id}")),
        (None, None) => return Err(CliError::usage("give --maxlen N or --minid ID")),
    };

    // Walk the entries that would go, counting per group those not delivered yet.
    let mut undelivered = vec![0u64; groups.len()];
    let mut remove = 0u64;
    let mut first = None;
    let mut last = None;
    let mut start = "-".to_owned();
    while budget.is_none_or(|b| remove < b) {
        let want = budget.map_or(PAGE, |b| (b - remove).min(PAGE));
        let ids = range(redis, stream, &start, &end, want).await?;
        for id in &ids {
            first.get_or_insert(*id);
            last = Some(*id);
            remove += 1;
            for (g, count) in groups.iter().zip(undelivered.iter_mut()) {
                if g.last_delivered_id.is_none_or(|ld| *id > ld) {
                    *count += 1;
                }
            }
        }
        match ids.last() {
            Some(id) if (ids.len() as u64) == want => start = format!("({id}"),
            _ => break,
        }
    }

    let mut report = TrimReport {
        stream: JsonBytes(stream.as_bytes().to_vec()),
        length,
        remove,
        first_removed: first.map(|i| i.to_string()),
        last_removed: last.map(|i| i.to_string()),
        threshold: last.map(|i| successor(i).to_string()),
        unsafe_groups: Vec::new(),
        refused: false,
        forced: args.force,
        dry_run: args.dry_run,
        removed: 0,
    };

    if let Some(cut) = last {
        for (g, undelivered) in groups.iter().zip(undelivered) {
            let name = String::from_utf8_lossy(&g.name).into_owned();
            let (pending, oldest) = pending_up_to(redis, stream, &g.name, cut).await?;
            if undelivered > 0 || pending > 0 {
                report.unsafe_groups.push(GroupCheck {
                    group: name,
                    last_delivered_id: g.last_delivered_id.map(|i| i.to_string()),
                    undelivered,
                    pending,
                    oldest_pending: oldest.map(|i| i.to_string()),
                });
            }
        }
    }
    report.refused = !report.unsafe_groups.is_empty() && !args.force;

    if let (Some(cut), false, false) = (last, report.refused, args.dry_run) {
        let threshold = successor(cut);
        if args.force {
            report.removed = redis
                .query(
                    redis::cmd("XTRIM")
                        .arg(stream)
                        .arg("MINID")
                        .arg("=")
                        .arg(threshold),
                )
                .await?;
        } else {
            report.removed = checked_trim(redis, stream, cut).await?;
        }
    }

    if json {
        render::json(&report)?;
    } else {
        print(&report)?;
    }
    if report.refused {
        return Err(CliError::refused(format!(
            "not trimming `{stream}`: {} would lose entries not yet processed; re-run with \
             --force to trim anyway",
            render::count(report.unsafe_groups.len() as u64, "group", "groups")
        )));
    }
    Ok(())
}

/// How many pending entries `group` has at or below `cut`, and the oldest of them.
async fn pending_up_to(
    redis: &mut Redis,
    stream: &Key,
    group: &[u8],
    cut: EntryId,
) -> Result<(u64, Option<EntryId>)> {
    let mut count = 0;
    let mut oldest = None;
    let mut start = "-".to_owned();
    loop {
        let rows = pending(redis, stream, group, &start, &cut.to_string(), PAGE).await?;
        let n = rows.len() as u64;
        if let Some(first) = rows.first() {
            oldest.get_or_insert(first.id);
        }
        count += n;
        match rows.last() {
            Some(row) if n == PAGE => start = format!("({}", row.id),
            _ => return Ok((count, oldest)),
        }
    }
}

/// The length of `stream` and its consumer groups; an error when it is no stream.
pub(super) async fn length_and_groups(
    redis: &mut Redis,
    stream: &Key,
) -> Result<(u64, Vec<GroupInfo>)> {
    redis.require_stream(stream).await?;
    let length = info::stream(redis, stream.as_bytes())
        .await?
        .map(|s| s.length)
        .unwrap_or_default();
    let groups = info::groups(redis, stream.as_bytes()).await?;
    Ok((length, groups))
}

/// One `XRANGE stream start end COUNT count` page: the entries' ids.
pub(super) async fn range(
    redis: &mut Redis,
    stream: &Key,
    start: &str,
    end: &str,
    count: u64,
) -> Result<Vec<EntryId>> {
    let reply: Value = redis
        .query(
            redis::cmd("XRANGE")
                .arg(stream)
                .arg(start)
                .arg(end)
                .arg("COUNT")
                .arg(count),
        )
        .await?;
    Ok(millrace::streams::reply::parse_entries(reply)
        .iter()
        .filter_map(|item| item.id())
        .collect())
}

/// One `XPENDING stream group start end count` page.
pub(super) async fn pending(
    redis: &mut Redis,
    stream: &Key,
    group: &[u8],
    start: &str,
    end: &str,
    count: u64,
) -> Result<Vec<PendingRow>> {
    let reply: Value = redis
        .query(
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg(start)
                .arg(end)
                .arg(count),
        )
        .await?;
    Ok(millrace::streams::reply::parse_pending(reply))
}

/// The library's checked trim of every entry up to `cut`: how many it removed, or a refusal when a
/// group changed since the entries were checked and would now lose some.
pub(super) async fn checked_trim(redis: &mut Redis, stream: &Key, cut: EntryId) -> Result<u64> {
    let verdict = trim_if_processed(redis.conn(), stream, cut)
        .await
        .map_err(|e| redis.error(&e))?;
    match verdict {
        TrimVerdict::Trimmed(n) => Ok(n),
        TrimVerdict::Undelivered(group) | TrimVerdict::Pending(group) => {
            Err(CliError::refused(format!(
                "not trimming `{stream}`: group `{}` changed while the entries were checked and \
                 would now lose some; run the command again",
                escape(&group)
            )))
        }
        _ => Ok(0),
    }
}

fn print(r: &TrimReport) -> Result<()> {
    let mut text = String::new();
    if r.remove == 0 {
        text.push_str(&format!(
            "nothing to trim: `{}` has {} and none is past the limit",
            r.stream,
            render::count(r.length, "entry", "entries")
        ));
        return render::out(&text);
    }
    let span = match (&r.first_removed, &r.last_removed) {
        (Some(a), Some(b)) if a != b => format!(" ({a} … {b})"),
        (Some(a), _) => format!(" ({a})"),
        _ => String::new(),
    };
    let verb = if r.dry_run || r.refused {
        "would remove"
    } else {
        "removing"
    };
    text.push_str(&format!(
        "{verb} {} of {} of `{}`{span}\n",
        r.remove,
        render::count(r.length, "entry", "entries"),
        r.stream
    ));
    if !r.unsafe_groups.is_empty() {
        text.push_str("groups that would lose entries they have not processed:\n");
        let mut table = Table::new(&[
            ("GROUP", Align::Left),
            ("LAST-DELIVERED", Align::Left),
            ("NOT-DELIVERED", Align::Right),
            ("PENDING", Align::Right),
            ("OLDEST-PENDING", Align::Left),
        ]);
        for g in &r.unsafe_groups {
            table.row(vec![
                escape(g.group.as_bytes()),
                render::opt(g.last_delivered_id.as_deref()),
                g.undelivered.to_string(),
                g.pending.to_string(),
                g.oldest_pending.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        text.push_str(&table.render());
        if r.forced {
            text.push_str(
                "--force given: trimming anyway; those entries are lost to those groups\n",
            );
        }
    }
    if r.dry_run {
        text.push_str(if r.refused {
            "dry run: a real run would refuse (re-run with --force to trim anyway)"
        } else {
            "dry run: nothing changed"
        });
    } else if !r.refused {
        text.push_str(&format!(
            "trimmed {} from `{}`",
            render::count(r.removed, "entry", "entries"),
            r.stream
        ));
    }
    render::out(text.trim_end())
}
