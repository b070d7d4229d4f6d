//! `millrace trim STREAM --acked`: remove the entries every consumer group has acknowledged, and
//! never one a group has not. The path depends on what the server has, asked at run time:
//!
//! * Redis >= 8.2 (or any server that knows `XTRIM … ACKED`): `XTRIM STREAM MINID <cut> ACKED`,
//!   where `<cut>` is just past the oldest group's last-delivered-id; the server removes every
//!   entry below it that all groups acknowledged, also those behind an entry still pending.
//! * Older servers (Redis 7.x, Valkey 9.1): the checked trim
//!   ([`millrace::streams::trim_if_processed`]) up to the last entry before the oldest one a group
//!   has not acknowledged (or not been delivered); entries behind a pending one stay.
//!
//! A stream without groups is refused: nothing acknowledges its entries (and `ACKED` would treat
//! them all as acknowledged).

use millrace::capabilities::ServerInfo;
use millrace::streams::successor;
use millrace::EntryId;
use redis::Value;
use serde::Serialize;

use crate::cli::TrimArgs;
use crate::connect::Redis;
use crate::error::{CliError, Result};
use crate::key::Key;
use crate::render::{self, JsonBytes};

use super::trim::{checked_trim, length_and_groups, pending, range, PAGE};

#[derive(Debug, Serialize)]
struct AckedReport {
    stream: JsonBytes,
    length: u64,
    /// The server holding the stream, e.g. `redis 8.2.3 (master)`.
    server: String,
    /// `xtrim-acked` (the server's `XTRIM … ACKED`) or `checked` (millrace's checked trim).
    method: &'static str,
    /// The newest entry the trim may remove (the checked trim removes every entry up to it).
    cut: Option<String>,
    /// Entries up to `cut` (what the checked trim removes; `XTRIM … ACKED` may remove more:
    /// acknowledged entries behind a pending one).
    up_to_cut: u64,
    dry_run: bool,
    /// Entries Redis removed (0 in a dry run).
    removed: u64,
}

/// Trims `args.stream` to what some group has not acknowledged yet.
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &TrimArgs) -> Result<()> {
    let stream = &args.stream;
    let (length, groups) = length_and_groups(redis, stream).await?;
    if groups.is_empty() {
        return Err(CliError::refused(format!(
            "not trimming `{stream}`: no consumer group reads it, so no entry is acknowledged; \
             --acked removes only entries every group acknowledged (use --maxlen or --minid to \
             trim a stream without groups)"
        )));
    }
    let master = if redis.is_cluster() {
        crate::server::master_of(redis, stream).await?
    } else {
        None
    };
    let server = crate::server::describe(redis, master.as_deref()).await?;

    // The last entry every group acknowledged, walking from the oldest: per group, the newest
    // entry both delivered to it and older than its oldest pending one.
    let mut cut: Option<EntryId> = None;
    for g in &groups {
        let Some(delivered) = g.last_delivered_id else {
            cut = None;
            break;
        };
        let end = match oldest_pending(redis, stream, &g.name).await? {
            Some(p) if p <= delivered => format!("({p}"),
            _ => delivered.to_string(),
        };
        let Some(last) = last_entry_up_to(redis, stream, &end).await? else {
            cut = None;
            break;
        };
        cut = Some(cut.map_or(last, |c| c.min(last)));
    }
    let up_to_cut = match cut {
        Some(c) => count_up_to(redis, stream, c).await?,
        None => 0,
    };
    let acked_trim = server_has_acked_trim(redis, master.as_deref(), &server).await?;
    let mut report = AckedReport {
        stream: JsonBytes(stream.as_bytes().to_vec()),
        length,
        server: server.to_string(),
        method: if acked_trim { "xtrim-acked" } else { "checked" },
        cut: cut.map(|c| c.to_string()),
        up_to_cut,
        dry_run: args.dry_run,
        removed: 0,
    };
    if !args.dry_run {
        report.removed = if acked_trim {
            // Below the oldest last-delivered-id of all groups: no entry a group has not been
            // delivered is even considered, whatever happens to the groups meanwhile.
            let oldest_delivered = groups.iter().filter_map(|g| g.last_delivered_id).min();
            match oldest_delivered {
                Some(d) => {
                    redis
                        .query(
                            redis::cmd("XTRIM")
                                .arg(stream)
                                .arg("MINID")
                                .arg(successor(d))
                                .arg("ACKED"),
                        )
                        .await?
                }
                None => 0,
            }
        } else if let Some(c) = cut {
            checked_trim(redis, stream, c).await?
        } else {
            0
        };
    }
    if json {
        render::json(&report)
    } else {
        print(&report)
    }
}

/// Whether the server trims with `ACKED`: `COMMAND INFO XACKDEL` where the user may ask (the two
/// came together in 8.2), else by version.
async fn server_has_acked_trim(
    redis: &mut Redis,
    node: Option<&str>,
    server: &ServerInfo,
) -> Result<bool> {
    let reply: std::result::Result<Vec<Value>, _> = redis
        .query_on(node, redis::cmd("COMMAND").arg("INFO").arg("XACKDEL"))
        .await;
    Ok(match reply {
        Ok(info) => !matches!(info.first(), None | Some(Value::Nil)),
        Err(_) => server.has_acked_trim(),
    })
}

async fn oldest_pending(redis: &mut Redis, stream: &Key, group: &[u8]) -> Result<Option<EntryId>> {
    let rows = pending(redis, stream, group, "-", "+", 1).await?;
    Ok(rows.first().map(|row| row.id))
}

async fn last_entry_up_to(redis: &mut Redis, stream: &Key, end: &str) -> Result<Option<EntryId>> {
    let reply: Value = redis
        .query(
            redis::cmd("XREVRANGE")
                .arg(stream)
                .arg(end)
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await?;
    Ok(millrace::streams::reply::parse_entries(reply)
        .iter()
        .find_map(|item| item.id()))
}

/// Entries at or below `cut`, paged.
async fn count_up_to(redis: &mut Redis, stream: &Key, cut: EntryId) -> Result<u64> {
    let mut count = 0u64;
    let mut start = "-".to_owned();
    loop {
        let ids = range(redis, stream, &start, &cut.to_string(), PAGE).await?;
        count += ids.len() as u64;
        match ids.last() {
            Some(id) if ids.len() as u64 == PAGE => start = format!("({id}"),
            _ => return Ok(count),
        }
    }
}

fn print(r: &AckedReport) -> Result<()> {
    let how = match r.method {
        "xtrim-acked" => {
            "XTRIM … ACKED: every entry all groups acknowledged, also behind a pending one"
        }
        _ => "checked trim: up to the oldest entry a group has not acknowledged",
    };
    let mut text = format!("server: {} ({how})\n", r.server);
    match (&r.cut, r.dry_run) {
        (None, true) => text.push_str(&format!(
            "dry run: no entry of `{}` is acknowledged by every group from the oldest on; \
             nothing changed",
            r.stream
        )),
        (Some(cut), true) => text.push_str(&format!(
            "dry run: {} up to {cut} acknowledged by every group; nothing changed",
            render::count(r.up_to_cut, "entry", "entries")
        )),
        (_, false) => text.push_str(&format!(
            "trimmed {} every group acknowledged from `{}` ({} left of {})",
            render::count(r.removed, "entry", "entries"),
            r.stream,
            r.length.saturating_sub(r.removed),
            r.length
        )),
    }
    render::out(&text)
}
