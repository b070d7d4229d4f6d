//! `millrace reap STREAM GROUP --idle 1h`: delete idle consumers without losing their entries.
//!
//! `XGROUP DELCONSUMER` silently drops a consumer's pending entries, so for every consumer idle
//! longer than `--idle` this command first moves its pending entries to `--into` with `XCLAIM`
//! (keeping their delivery counts, `JUSTID`, and their idle time, so workers can still claim them
//! at once), and then deletes the consumer in a Lua script that checks, atomically, that it holds
//! no pending entry and is still idle. A consumer with pending entries is never deleted.

use std::sync::LazyLock;

use millrace::EntryId;
use redis::Value;
use serde::Serialize;

use crate::cli::ReapArgs;
use crate::commands::trim::successor;
use crate::connect::Redis;
use crate::error::Result;
use crate::info::{self, ConsumerInfo};
use crate::render::{self, escape, millis, Align, JsonBytes, Table};

/// Pending entries claimed per XPENDING/XCLAIM round.
const BATCH: usize = 500;

/// Deletes a consumer only if it has no pending entry and is still idle for at least `ARGV[3]` ms.
/// Returns the DELCONSUMER reply (0), -1 when entries are pending, -2 when it became active,
/// -3 when it no longer exists.
static DELETE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return -1 end
local found = false
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name == ARGV[2] then
    found = true
    if tonumber(idle) < tonumber(ARGV[3]) then return -2 end
  end
end
if not found then return -3 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
",
    )
});

#[derive(Debug, Serialize)]
struct Row {
    consumer: JsonBytes,
    idle_ms: u64,
    /// Pending entries before the reap.
    pending: u64,
    /// Entries moved to `--into`.
    claimed: u64,
    /// Pending entries that were already deleted from the stream; XCLAIM dropped them.
    dropped_deleted: u64,
    /// `deleted`, `would delete`, or why the consumer was kept.
    action: String,
    deleted: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    stream: String,
    group: String,
    into: String,
    idle_ms: u64,
    dry_run: bool,
    consumers: Vec<Row>,
}

/// Reaps idle consumers.
pub(crate) async fn run(redis: &mut Redis, json: bool, args: &ReapArgs) -> Result<()> {
    let (stream, group) = (args.stream.as_str(), args.group.as_str());
    redis.require_stream(stream).await?;
    let idle_ms = u64::try_from(args.idle.as_millis()).unwrap_or(u64::MAX);
    let consumers = info::consumers(redis, stream, group).await?;
    let mut report = Report {
        stream: stream.to_owned(),
        group: group.to_owned(),
        into: args.into.clone(),
        idle_ms,
        dry_run: args.dry_run,
        consumers: Vec::new(),
    };
    for c in consumers
        .into_iter()
        .filter(|c| c.idle_ms >= idle_ms && c.name != args.into.as_bytes())
    {
        let row = if args.dry_run {
            Row {
                consumer: JsonBytes(c.name.clone()),
                idle_ms: c.idle_ms,
                pending: c.pending,
                claimed: 0,
                dropped_deleted: 0,
                action: if c.pending > 0 {
                    format!(
                        "would move {} pending to `{}`, then delete",
                        c.pending, args.into
                    )
                } else {
                    "would delete".to_owned()
                },
                deleted: false,
            }
        } else {
            reap_one(redis, args, idle_ms, c).await?
        };
        report.consumers.push(row);
    }
    if json {
        return render::json(&report);
    }
    if report.consumers.is_empty() {
        return render::out(&format!(
            "no consumer of group `{group}` on `{stream}` is idle for {} or longer",
            render::duration(args.idle)
        ));
    }
    let mut table = Table::new(&[
        ("CONSUMER", Align::Left),
        ("IDLE", Align::Right),
        ("PENDING", Align::Right),
        ("CLAIMED", Align::Right),
        ("ACTION", Align::Left),
    ]);
    for r in &report.consumers {
        table.row(vec![
            escape(&r.consumer.0),
            millis(r.idle_ms),
            r.pending.to_string(),
            r.claimed.to_string(),
            r.action.clone(),
        ]);
    }
    let deleted = report.consumers.iter().filter(|r| r.deleted).count();
    let mut text = table.render();
    text.push_str(&if args.dry_run {
        format!(
            "dry run: {} would be reaped",
            render::count(report.consumers.len() as u64, "consumer", "consumers")
        )
    } else {
        format!(
            "deleted {deleted} of {} idle {}",
            report.consumers.len(),
            if report.consumers.len() == 1 {
                "consumer"
            } else {
                "consumers"
            }
        )
    });
    render::out(&text)
}

async fn reap_one(
    redis: &mut Redis,
    args: &ReapArgs,
    idle_ms: u64,
    c: ConsumerInfo,
) -> Result<Row> {
    let (stream, group) = (args.stream.as_str(), args.group.as_str());
    let name = String::from_utf8_lossy(&c.name).into_owned();
    let before = consumer_pending(redis, stream, group, &c.name).await?;
    let mut claimed = 0u64;
    // One pass over the consumer's pending entries, oldest first. Entries it touched again since
    // (younger than --idle) are not claimed; the delete script then keeps the consumer.
    let mut start = EntryId::MIN;
    loop {
        let rows = millrace::streams::xpending_range(
            redis.conn(),
            stream,
            group,
            None,
            start,
            EntryId::new(u64::MAX, u64::MAX),
            BATCH,
            Some(&name),
        )
        .await
        .map_err(|e| redis.error(&e))?;
        let Some(last) = rows.last() else { break };
        start = successor(last.id);
        let ids: Vec<EntryId> = rows.iter().map(|r| r.id).collect();
        // Keep the entries about as idle as they were so that workers' XAUTOCLAIM takes them
        // promptly.
        let keep_idle = rows.iter().map(|r| r.idle_ms).min().unwrap_or_default();
        let reply: Value = redis
            .query(
                redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(group)
                    .arg(&args.into)
                    .arg(idle_ms)
                    .arg(&ids)
                    .arg("IDLE")
                    .arg(keep_idle)
                    .arg("JUSTID"),
            )
            .await?;
        claimed += crate::value::list(reply).len() as u64;
        if rows.len() < BATCH {
            break;
        }
    }
    // Redis 7 drops pending entries whose stream entry was deleted instead of claiming them.
    let after = consumer_pending(redis, stream, group, &c.name).await?;
    let dropped = before.saturating_sub(after).saturating_sub(claimed);
    let verdict: i64 = DELETE_SCRIPT
        .key(stream)
        .arg(group)
        .arg(&name)
        .arg(idle_ms)
        .invoke_async(redis.conn())
        .await
        .map_err(|e| redis.error(&e))?;
    let (action, deleted) = match verdict {
        -1 => (
            "kept: it still has pending entries (it was active again)".to_owned(),
            false,
        ),
        -2 => ("kept: it became active".to_owned(), false),
        -3 => ("already gone".to_owned(), false),
        _ => ("deleted".to_owned(), true),
    };
    Ok(Row {
        consumer: JsonBytes(c.name),
        idle_ms: c.idle_ms,
        pending: c.pending,
        claimed,
        dropped_deleted: dropped,
        action,
        deleted,
    })
}

/// The number of entries `consumer` holds pending (XPENDING summary form).
async fn consumer_pending(
    redis: &mut Redis,
    stream: &str,
    group: &str,
    consumer: &[u8],
) -> Result<u64> {
    let summary: Value = redis
        .group_query(redis::cmd("XPENDING").arg(stream).arg(group), stream, group)
        .await?;
    let per_consumer = crate::value::list(summary)
        .into_iter()
        .nth(3)
        .map(crate::value::list);
    Ok(per_consumer
        .unwrap_or_default()
        .iter()
        .find_map(|row| {
            let row = crate::value::list_ref(row);
            if crate::value::bytes(row.first()?)? == consumer {
                crate::value::int(row.get(1)?)
            } else {
                None
            }
        })
        .unwrap_or_default())
}
