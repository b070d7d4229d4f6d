//! Delayed redelivery of pending entries, kept in Redis: an entry is delayed by backdating its idle
//! time (so any consumer's `XAUTOCLAIM` takes it once the delay is over), and its owner takes it
//! back at the due time with a delivery counted. Both steps check ownership atomically.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use super::reply::{parse_entry, ReadItem};
use super::script::LuaScript;
use crate::entry::EntryId;

/// `ARGV`: group, consumer, then triples (id, idle ms, delivery-count change). For each id still
/// pending for the consumer: set its idle time, and its delivery count changed by the given amount
/// (at least 1), without counting a delivery (`JUSTID`). Returns the ids it set.
static BACKDATE: LuaScript = LuaScript::new(
    r"
local out = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  if row and row[2] == ARGV[2] then
    local n = row[4] + tonumber(ARGV[i + 2])
    if n < 1 then n = 1 end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[i + 1], 'RETRYCOUNT', n, 'JUSTID')
    out[#out + 1] = id
  end
end
return out
",
);

/// `ARGV`: group, consumer, ids. For each id still pending for the consumer: claim it for the
/// consumer again (`XCLAIM` without `JUSTID`: one more delivery, idle time 0) and return
/// `{id, deliveries, entry}`; `entry` is nil when the entry was deleted (the claim then dropped it
/// from the pending list).
static TAKE_BACK: LuaScript = LuaScript::new(
    r"
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  if row and row[2] == ARGV[2] then
    local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
    out[#out + 1] = {id, row[4] + 1, claimed[1] or false}
  end
end
return out
",
);

/// At most this many ids go into one script call.
const IDS_PER_CALL: usize = 200;

/// One entry to backdate: its id, the idle time to give it, and by how much to change its delivery
/// count (−1 undoes a delivery counted by a read that did not hand the entry over).
pub(crate) type Backdate = (EntryId, Duration, i64);

/// Sets the idle time (and delivery count) of those of `entries` still pending for `consumer`;
/// returns the ids it set. Entries acknowledged meanwhile or claimed by another consumer are left
/// alone.
pub(crate) async fn backdate_if_owned<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    entries: &[Backdate],
) -> RedisResult<Vec<EntryId>> {
    let mut set = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(IDS_PER_CALL) {
        let mut args = Vec::with_capacity(chunk.len() * 3 + 2);
        args.extend([group.to_owned(), consumer.to_owned()]);
        for (id, idle, change) in chunk {
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            args.extend([id.to_string(), idle_ms.to_string(), change.to_string()]);
        }
        let reply: Vec<Value> = BACKDATE.run(conn, &[stream], &args).await?;
        set.extend(reply.into_iter().filter_map(super::reply::id_of));
    }
    Ok(set)
}

/// What [`take_back_if_owned`] brought: an entry (or a tombstone, when it was deleted) with its
/// delivery count, this delivery included.
pub(crate) type TakenBack = (ReadItem, u64);

/// Takes back those of `ids` still pending for `consumer`, counting a delivery, with their fields.
pub(crate) async fn take_back_if_owned<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: &[EntryId],
) -> RedisResult<Vec<TakenBack>> {
    let mut taken = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_CALL) {
        let mut args = Vec::with_capacity(chunk.len() + 2);
        args.extend([group.to_owned(), consumer.to_owned()]);
        args.extend(chunk.iter().map(EntryId::to_string));
        let reply: Vec<Vec<Value>> = TAKE_BACK.run(conn, &[stream], &args).await?;
        for row in reply {
            let mut row = row.into_iter();
            let (Some(id), Some(n), entry) = (row.next(), row.next(), row.next()) else {
                continue;
            };
            let (Some(id), Ok(n)) = (super::reply::id_of(id), redis::from_redis_value::<u64>(n))
            else {
                continue;
            };
            let item = match entry {
                None | Some(Value::Nil) => ReadItem::Tombstone(id),
                Some(v) => parse_entry(v),
            };
            taken.push((item, n));
        }
    }
    Ok(taken)
}
