//! A trim that no consumer group can lose entries to: `XTRIM MINID` only after checking, atomically,
//! that every group has been delivered everything below the cut and holds none of it pending.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use super::script::LuaScript;
use crate::entry::EntryId;

/// `XTRIM KEYS[1] MINID = ARGV[1]` if every group has been delivered everything up to `ARGV[2]`
/// and holds nothing pending at or below it. Returns the number of entries removed, or
/// `{-1, group}` / `{-2, group}` naming a group that would lose undelivered / pending entries.
static TRIM_SCRIPT: LuaScript = LuaScript::new(
    r"
local function num_lt(x, y)
  if #x ~= #y then return #x < #y end
  return x < y
end
local function id_lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return true end
  if am ~= bm then return num_lt(am, bm) end
  return num_lt(as, bs)
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if not last or id_lt(last, ARGV[2]) then return {-1, name} end
  if #redis.call('XPENDING', KEYS[1], name, '-', ARGV[2], 1) > 0 then return {-2, name} end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '=', ARGV[1])
",
);

/// What [`trim_if_processed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrimVerdict {
    /// Trimmed; this many entries were removed.
    Trimmed(u64),
    /// Not trimmed: this group has not been delivered every entry up to the cut.
    Undelivered(Vec<u8>),
    /// Not trimmed: this group still holds an entry at or below the cut pending.
    Pending(Vec<u8>),
}

/// Removes every entry up to and including `last` (`XTRIM MINID` at its successor), but only if,
/// atomically, every consumer group of the stream has been delivered all of them and holds none
/// pending. A group created or moved back meanwhile therefore cannot lose entries.
pub async fn trim_if_processed<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: impl AsRef<[u8]>,
    last: EntryId,
) -> RedisResult<TrimVerdict> {
    let threshold = super::successor(last).to_string();
    let last = last.to_string();
    let reply: Value = TRIM_SCRIPT
        .run(conn, &[stream.as_ref()], &[threshold, last])
        .await?;
    Ok(match reply {
        Value::Int(n) => TrimVerdict::Trimmed(n.max(0).unsigned_abs()),
        Value::Array(parts) => {
            let group = match parts.get(1) {
                Some(Value::BulkString(g)) => g.clone(),
                _ => Vec::new(),
            };
            match parts.first() {
                Some(Value::Int(-2)) => TrimVerdict::Pending(group),
                _ => TrimVerdict::Undelivered(group),
            }
        }
        other => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply from the trim script",
                format!("{other:?}"),
            )))
        }
    })
}
