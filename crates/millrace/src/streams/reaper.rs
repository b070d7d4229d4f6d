//! The consumer reaper: deletes idle consumers of a group without ever losing their entries.
//!
//! `XGROUP DELCONSUMER` silently drops a consumer's pending entries, so a consumer is deleted only
//! in a script that checks, atomically, that it holds no pending entry and is still idle. Entries
//! it holds can first be handed to an heir with `XCLAIM` (keeping their delivery counts and about
//! their idle time, so that workers' `XAUTOCLAIM` takes them promptly). Consumers reap idle peers
//! this way ([`ConsumerOptions::reap_idle_consumers_after`](crate::ConsumerOptions::reap_idle_consumers_after),
//! without an heir), and so does `millrace reap` (with one).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use super::script::LuaScript;
use super::{millis, parse_pending, PendingRow};
use crate::entry::EntryId;

/// Pending entries handed over per `XPENDING`/`XCLAIM` round.
const BATCH: usize = 500;

/// `KEYS[1]` the stream, `ARGV[1]` the group, `ARGV[2]` the consumer, `ARGV[3]` the minimum idle
/// time in ms. Deletes the consumer only if it has no pending entry and is still idle that long.
/// Returns 0 when deleted, -1 when entries are pending, -2 when it became active, -3 when it no
/// longer exists.
static DELETE_SCRIPT: LuaScript = LuaScript::new(
    r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return -1 end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name == ARGV[2] then
    if tonumber(idle) < tonumber(ARGV[3]) then return -2 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 0
  end
end
return -3
",
);

/// A consumer that has been idle at least the asked time, as `XINFO CONSUMERS` reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdleConsumer {
    /// Its name.
    pub name: Vec<u8>,
    /// How many entries it holds pending.
    pub pending: u64,
    /// How long since it last read, claimed or acknowledged.
    pub idle: Duration,
}

/// What [`reap_consumer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reaped {
    /// Pending entries handed to the heir.
    pub claimed: u64,
    /// Pending entries whose stream entry was already deleted: Redis dropped them when they were
    /// claimed (Redis 7 does instead of claiming them).
    pub dropped_deleted: u64,
    /// Whether the consumer was deleted.
    pub outcome: ReapOutcome,
}

/// Whether [`reap_consumer`] deleted the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReapOutcome {
    /// Deleted.
    Deleted,
    /// Kept: it still holds pending entries (no heir was given, or it read again meanwhile).
    KeptPending,
    /// Kept: it was active again before the delete.
    KeptActive,
    /// It no longer existed.
    Gone,
}

/// The consumers of the group idle at least `min_idle`, except `keep`.
pub async fn idle_consumers<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: impl AsRef<[u8]>,
    group: impl AsRef<[u8]>,
    min_idle: Duration,
    keep: impl AsRef<[u8]>,
) -> RedisResult<Vec<IdleConsumer>> {
    let reply: Vec<Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream.as_ref())
        .arg(group.as_ref())
        .query_async(conn)
        .await?;
    Ok(reply
        .into_iter()
        .filter_map(parse_consumer)
        .filter(|c| c.idle >= min_idle && c.name != keep.as_ref())
        .collect())
}

/// One row of `XINFO CONSUMERS` (a flat field/value array, or a map with RESP3).
fn parse_consumer(row: Value) -> Option<IdleConsumer> {
    let pairs: Vec<(Value, Value)> = match row {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        _ => return None,
    };
    let (mut name, mut pending, mut idle) = (None, 0, 0);
    for (k, v) in pairs {
        match (&k, v) {
            (Value::BulkString(k), Value::BulkString(n)) if k == b"name" => name = Some(n),
            (Value::SimpleString(k), Value::BulkString(n)) if k == "name" => name = Some(n),
            (k, Value::Int(n)) if is_key(k, "pending") => pending = n.max(0).unsigned_abs(),
            (k, Value::Int(n)) if is_key(k, "idle") => idle = n.max(0).unsigned_abs(),
            _ => {}
        }
    }
    Some(IdleConsumer {
        name: name?,
        pending,
        idle: Duration::from_millis(idle),
    })
}

fn is_key(v: &Value, name: &str) -> bool {
    match v {
        Value::BulkString(b) => b == name.as_bytes(),
        Value::SimpleString(s) => s == name,
        _ => false,
    }
}

/// Reaps one consumer: hands its pending entries to `heir` (when given) with `XCLAIM`, then deletes
/// it if, atomically, it holds no pending entry and is still idle at least `min_idle`. Entries it
/// touched again since (idle less than `min_idle`) are not handed over, and it is kept.
pub async fn reap_consumer<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: impl AsRef<[u8]>,
    group: impl AsRef<[u8]>,
    consumer: impl AsRef<[u8]>,
    min_idle: Duration,
    heir: Option<&[u8]>,
) -> RedisResult<Reaped> {
    let (stream, group, consumer) = (stream.as_ref(), group.as_ref(), consumer.as_ref());
    let mut reaped = Reaped {
        claimed: 0,
        dropped_deleted: 0,
        outcome: ReapOutcome::KeptPending,
    };
    if let Some(heir) = heir {
        let (claimed, dropped) = hand_over(conn, stream, group, consumer, min_idle, heir).await?;
        reaped.claimed = claimed;
        reaped.dropped_deleted = dropped;
    }
    let verdict: i64 = DELETE_SCRIPT
        .run(
            conn,
            &[stream],
            &[group, consumer, millis(min_idle).to_string().as_bytes()],
        )
        .await?;
    reaped.outcome = match verdict {
        -1 => ReapOutcome::KeptPending,
        -2 => ReapOutcome::KeptActive,
        -3 => ReapOutcome::Gone,
        _ => ReapOutcome::Deleted,
    };
    Ok(reaped)
}

/// One pass over the consumer's pending entries, oldest first, claiming them for `heir`. Returns
/// how many were claimed and how many Redis dropped because their stream entry was deleted.
async fn hand_over<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &[u8],
    group: &[u8],
    consumer: &[u8],
    min_idle: Duration,
    heir: &[u8],
) -> RedisResult<(u64, u64)> {
    let (mut claimed, mut seen) = (0u64, 0u64);
    let mut start = EntryId::MIN;
    loop {
        let rows = pending_of(conn, stream, group, consumer, start).await?;
        let Some(last) = rows.last() else { break };
        start = successor(last.id);
        seen += rows.len() as u64;
        let ids: Vec<EntryId> = rows.iter().map(|r| r.id).collect();
        // Keep the entries about as idle as they were, so that workers' XAUTOCLAIM takes them
        // promptly.
        let keep_idle = rows.iter().map(|r| r.idle_ms).min().unwrap_or_default();
        let reply: Vec<Value> = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(group)
            .arg(heir)
            .arg(millis(min_idle))
            .arg(&ids)
            .arg("IDLE")
            .arg(keep_idle)
            .arg("JUSTID")
            .query_async(conn)
            .await?;
        claimed += reply.len() as u64;
        if rows.len() < BATCH {
            break;
        }
    }
    // XCLAIM leaves out (and Redis 7 drops from the PEL) entries that were deleted from the
    // stream; entries the consumer touched again are left out too, and stay pending for it.
    let still = pending_of(conn, stream, group, consumer, EntryId::MIN)
        .await?
        .len() as u64;
    Ok((claimed, seen.saturating_sub(claimed).saturating_sub(still)))
}

/// Up to [`BATCH`] pending entries of `consumer` from `start` on.
async fn pending_of<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &[u8],
    group: &[u8],
    consumer: &[u8],
    start: EntryId,
) -> RedisResult<Vec<PendingRow>> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("+")
        .arg(BATCH)
        .arg(consumer)
        .query_async(conn)
        .await?;
    Ok(parse_pending(reply))
}

/// The id right after `id`.
pub fn successor(id: EntryId) -> EntryId {
    match id.seq.checked_add(1) {
        Some(seq) => EntryId::new(id.ms, seq),
        None => EntryId::new(id.ms.saturating_add(1), 0),
    }
}

/// Deletes every consumer of the group other than `keep` that has no pending entries and has been
/// idle at least `min_idle`. Returns the deleted names. A consumer that holds entries is never
/// deleted (Redis would drop its pending entries silently).
pub async fn reap_idle_consumers<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    keep: &str,
    min_idle: Duration,
) -> RedisResult<Vec<String>> {
    let mut removed = Vec::new();
    for c in idle_consumers(conn, stream, group, min_idle, keep).await? {
        if c.pending > 0 {
            continue;
        }
        let reaped = reap_consumer(conn, stream, group, &c.name, min_idle, None).await?;
        if reaped.outcome == ReapOutcome::Deleted {
            removed.push(String::from_utf8_lossy(&c.name).into_owned());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_is_the_next_id() {
        assert_eq!(successor(EntryId::new(5, 1)), EntryId::new(5, 2));
        assert_eq!(successor(EntryId::new(5, u64::MAX)), EntryId::new(6, 0));
    }

    #[test]
    fn consumer_rows_read_in_resp2_and_resp3() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            bulk("name"),
            bulk("c1"),
            bulk("pending"),
            Value::Int(2),
            bulk("idle"),
            Value::Int(1500),
        ]);
        let resp3 = Value::Map(vec![
            (Value::SimpleString("name".into()), bulk("c1")),
            (Value::SimpleString("pending".into()), Value::Int(2)),
            (Value::SimpleString("idle".into()), Value::Int(1500)),
        ]);
        for row in [resp2, resp3] {
            let c = parse_consumer(row).unwrap();
            assert_eq!(c.name, b"c1");
            assert_eq!(c.pending, 2);
            assert_eq!(c.idle, Duration::from_millis(1500));
        }
    }
}
