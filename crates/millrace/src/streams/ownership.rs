//! The ownership step: an atomic check-and-take of pending entries by their owner.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use super::script::LuaScript;
use crate::entry::EntryId;

/// For each id: if the entry is still pending and owned by `ARGV[2]`, set its idle time to `ARGV[3]`
/// ms (`XCLAIM … JUSTID`, which does not count a delivery) and return it with its delivery count;
/// otherwise (acknowledged, or claimed by another consumer) leave it alone and return nothing.
static SCRIPT: LuaScript = LuaScript::new(
    r"
local out = {}
for i = 4, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if row and row[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    out[#out + 1] = row[1]
    out[#out + 1] = row[4]
  end
end
return out
",
);

/// At most this many ids go into one script call (each costs two commands inside the script).
const IDS_PER_CALL: usize = 500;

/// Sets the idle time of those of `ids` that are still pending **for `consumer`**, atomically per
/// call, and returns them with their delivery counts (in the order given). Entries acknowledged
/// meanwhile, or claimed by another consumer, are left untouched and left out of the answer.
///
/// `idle = 0` takes ownership for handling (nobody claims them for `claim_min_idle`); a large
/// `idle` hands them to the next claimer at once (a release). Unlike a plain `XCLAIM`, neither can
/// take an entry away from a consumer that claimed it.
pub async fn set_idle_if_owned<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: &[EntryId],
    idle: Duration,
) -> RedisResult<Vec<(EntryId, u64)>> {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut owned = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_CALL) {
        let mut args = Vec::with_capacity(chunk.len() + 3);
        args.extend([group.to_owned(), consumer.to_owned(), idle_ms.to_string()]);
        args.extend(chunk.iter().map(EntryId::to_string));
        let reply: Vec<Value> = SCRIPT.run(conn, &[stream], &args).await?;
        for pair in reply.chunks_exact(2) {
            let id = redis::from_redis_value::<String>(pair[0].clone())?;
            let deliveries: u64 = redis::from_redis_value(pair[1].clone())?;
            if let Ok(id) = id.parse::<EntryId>() {
                owned.push((id, deliveries));
            }
        }
    }
    Ok(owned)
}
