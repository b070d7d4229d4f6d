//! The one way an entry moves between streams, used both to dead-letter an entry and to replay a
//! dead letter: if the entry is still where it was expected (pending in the group, or still in the
//! dead-letter stream), `XADD` its fields to the other stream, then release the original (`XACK` or
//! `XDEL`). Entries of up to [`SCRIPT_FIELD_LIMIT`] fields move atomically in a Lua script; larger
//! ones, and moves between two slots of a cluster, move in steps; so does a move whose slot is
//! being migrated while its two keys are on different sides (the script gets `TRYAGAIN`), from
//! that attempt on.
//!
//! A move in steps retried is never added twice: before its first `XADD` it notes the target's
//! last id (a [`Marker`]), and a later attempt of the same move first looks among the entries
//! added after that id for one with exactly its fields (the `XADD` of an attempt whose reply was
//! lost), and releases the original without adding it again when it finds it.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use crate::entry::EntryId;
use crate::streams::script::LuaScript;
use crate::streams::{parse_entries, ReadItem};

/// Entries with more fields than this are moved in steps instead of by the script: Lua's `unpack`
/// stops near 8,000 values, so the script cannot pass a larger entry to `XADD`.
pub(super) const SCRIPT_FIELD_LIMIT: usize = 1_000;

/// `KEYS[1]` the stream the entry is in, `KEYS[2]` the stream it moves to.
/// `ARGV[1]`: `ack` (the entry must be pending in group `ARGV[2]`, and is acked after the copy),
/// `del` (the entry must still be in `KEYS[1]`, and is deleted after the copy), or `check` (verify
/// the ACL permissions a dead-letter move needs, writing nothing; with one key, the dead-letter
/// stream is `ARGV[5]`, for a cluster where the two are in different slots). `ARGV[3]` the entry
/// id. `ARGV[4]`
/// `1` to append the fields `KEYS[1]` still holds for the entry. `ARGV[5..]` the fields to write.
/// Returns the new id, nil when the entry was not where it was expected, or -1 (changing nothing)
/// when the stored fields make the entry too large for `unpack`. A failing `XADD` (OOM, a key of
/// the wrong type) raises before the release, so nothing changes.
pub(super) static SCRIPT: LuaScript = LuaScript::new(
    r"
local id = ARGV[3]
if ARGV[1] == 'check' then
  local target = KEYS[2] or ARGV[5]
  if not redis.acl_check_cmd('XADD', target, '*', 'f', 'v') then
    return redis.error_reply('NOPERM this user has no permissions to run XADD on the dead-letter stream ' .. target)
  end
  if not redis.acl_check_cmd('XACK', KEYS[1], ARGV[2], '0-1') then
    return redis.error_reply('NOPERM this user has no permissions to run XACK on ' .. KEYS[1])
  end
  if not redis.acl_check_cmd('XRANGE', KEYS[1], '-', '+') then
    return redis.error_reply('NOPERM this user has no permissions to run the \'xrange\' command on ' .. KEYS[1])
  end
  return 1
elseif ARGV[1] == 'ack' then
  if #redis.call('XPENDING', KEYS[1], ARGV[2], id, id, 1) == 0 then return false end
elseif #redis.call('XRANGE', KEYS[1], id, id) == 0 then
  return false
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
if ARGV[4] == '1' then
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if found[1] then
    for _, v in ipairs(found[1][2]) do fields[#fields + 1] = v end
  end
  if #fields > 4000 then return -1 end
end
local new = redis.call('XADD', KEYS[2], '*', unpack(fields))
if ARGV[1] == 'ack' then
  redis.call('XACK', KEYS[1], ARGV[2], id)
else
  redis.call('XDEL', KEYS[1], id)
end
return new
",
);

/// Where a move in steps stands between attempts: the target's last id before its first `XADD`.
/// Kept by whoever retries the move, and passed to every attempt of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Marker(Option<String>);

/// Entries of the target looked at for a copy of a retried move, at most.
const COPY_SEARCH_LIMIT: usize = 10_000;

/// What happens to the original entry once it is copied.
#[derive(Debug, Clone, Copy)]
pub(super) enum Release<'a> {
    /// It must be pending in this group, and is acknowledged (dead-lettering).
    Ack(&'a [u8]),
    /// It must still be in its stream, and is deleted (replaying a dead letter).
    Delete,
}

/// One move: from where, to where, which entry, and what happens to it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transfer<'a> {
    pub(super) from: &'a [u8],
    pub(super) to: &'a [u8],
    pub(super) id: EntryId,
    pub(super) release: Release<'a>,
    /// Move in steps even when the script could (the two streams are in different slots of a
    /// cluster, where one script cannot touch both).
    pub(super) in_steps: bool,
}

impl Transfer<'_> {
    /// Moves the entry with `fields` (field, value, field, value, ...); with `append_stored`, the
    /// fields `from` still holds for the entry follow them (only used with few `fields`). Returns
    /// the new id, or `None` when the entry was not where it was expected.
    pub(super) async fn run<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        fields: &[&[u8]],
        append_stored: bool,
        marker: &mut Marker,
    ) -> RedisResult<Option<String>> {
        // A move that began in steps (its marker set) goes on in steps: only they look for the
        // copy an earlier attempt may have added.
        if self.in_steps || marker.0.is_some() {
            return self
                .in_steps_with_stored(conn, fields, append_stored, marker)
                .await;
        }
        if fields.len() > 2 * SCRIPT_FIELD_LIMIT {
            return self.in_steps(conn, fields, marker).await;
        }
        let id = self.id.to_string();
        let (mode, group): (&[u8], &[u8]) = match self.release {
            Release::Ack(group) => (b"ack", group),
            Release::Delete => (b"del", b""),
        };
        let append: &[u8] = if append_stored { b"1" } else { b"0" };
        let mut args: Vec<&[u8]> = Vec::with_capacity(4 + fields.len());
        args.extend([mode, group, id.as_bytes(), append]);
        args.extend_from_slice(fields);
        let reply: Value = match SCRIPT.run(conn, &[self.from, self.to], &args).await {
            Ok(reply) => reply,
            // The slot is being migrated and the two keys are on different sides of it: one
            // script cannot touch both until the migration moved them both, so this attempt moves
            // in steps (each command follows the migration's `ASK` by itself).
            Err(e) if e.code() == Some("TRYAGAIN") => {
                tracing::debug!(error = %e, "the atomic move met a slot migration; moving in steps");
                return self
                    .in_steps_with_stored(conn, fields, append_stored, marker)
                    .await;
            }
            Err(e) => return Err(e),
        };
        match reply {
            Value::Nil => Ok(None),
            // The stored fields are too many for the script: move them in steps.
            Value::Int(-1) => {
                let stored = self.stored_fields(conn).await?;
                let mut all = fields.to_vec();
                for (k, v) in &stored {
                    all.push(k);
                    all.push(v);
                }
                self.in_steps(conn, &all, marker).await
            }
            other => Ok(Some(redis::from_redis_value(other)?)),
        }
    }

    /// [`Transfer::in_steps`] with `fields`, followed (with `append_stored`) by the fields `from`
    /// still holds for the entry.
    async fn in_steps_with_stored<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        fields: &[&[u8]],
        append_stored: bool,
        marker: &mut Marker,
    ) -> RedisResult<Option<String>> {
        if !append_stored {
            return self.in_steps(conn, fields, marker).await;
        }
        let stored = self.stored_fields(conn).await?;
        let mut all = fields.to_vec();
        for (k, v) in &stored {
            all.push(k);
            all.push(v);
        }
        self.in_steps(conn, &all, marker).await
    }

    /// The fields `from` holds for the entry (none when it is gone).
    async fn stored_fields<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> RedisResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let found: Value = redis::cmd("XRANGE")
            .arg(self.from)
            .arg(self.id)
            .arg(self.id)
            .query_async(conn)
            .await?;
        Ok(parse_entries(found)
            .into_iter()
            .find_map(|item| match item {
                ReadItem::Entry(e) if e.id == self.id => Some(e.fields),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// The same move in steps, for entries too large for the script: check, `XADD`, release. Not
    /// atomic, but nothing is lost: the release comes after the `XADD`, so a crash between the two
    /// (or a second mover at the same moment) leaves a copy in both streams, never in neither. A
    /// retried move (its `marker` set) adds no second copy: see the module docs.
    async fn in_steps<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        fields: &[&[u8]],
        marker: &mut Marker,
    ) -> RedisResult<Option<String>> {
        let found: Vec<Value> = match self.release {
            Release::Ack(group) => {
                redis::cmd("XPENDING")
                    .arg(self.from)
                    .arg(group)
                    .arg(self.id)
                    .arg(self.id)
                    .arg(1)
                    .query_async(conn)
                    .await?
            }
            Release::Delete => {
                redis::cmd("XRANGE")
                    .arg(self.from)
                    .arg(self.id)
                    .arg(self.id)
                    .query_async(conn)
                    .await?
            }
        };
        if found.is_empty() {
            return Ok(None);
        }
        let copy = match &marker.0 {
            Some(since) => self.find_copy(conn, since, fields).await?,
            None => {
                marker.0 = Some(self.last_id(conn).await?);
                None
            }
        };
        let new = match copy {
            Some(id) => id,
            None => {
                let mut xadd = redis::cmd("XADD");
                xadd.arg(self.to).arg("*");
                for f in fields {
                    xadd.arg(*f);
                }
                xadd.query_async::<String>(conn).await?
            }
        };
        let mut release = match self.release {
            Release::Ack(_) => redis::cmd("XACK"),
            Release::Delete => redis::cmd("XDEL"),
        };
        release.arg(self.from);
        if let Release::Ack(group) = self.release {
            release.arg(group);
        }
        release.arg(self.id).query_async::<Value>(conn).await?;
        Ok(Some(new))
    }

    /// The target's last id (`0-0` when it is empty or missing).
    async fn last_id<C: ConnectionLike + Send>(&self, conn: &mut C) -> RedisResult<String> {
        let last: Value = redis::cmd("XREVRANGE")
            .arg(self.to)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(parse_entries(last)
            .into_iter()
            .find_map(|item| item.id())
            .map_or_else(|| "0-0".to_owned(), |id| id.to_string()))
    }

    /// The id of an entry of the target after `since` with exactly `fields`: the copy an earlier
    /// attempt of this move added.
    async fn find_copy<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        since: &str,
        fields: &[&[u8]],
    ) -> RedisResult<Option<String>> {
        const PAGE: usize = 500;
        let mut after = since.to_owned();
        let mut looked = 0;
        while looked < COPY_SEARCH_LIMIT {
            let page: Value = redis::cmd("XRANGE")
                .arg(self.to)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(conn)
                .await?;
            let items = parse_entries(page);
            let n = items.len();
            for item in items {
                let Some(id) = item.id() else { continue };
                after = id.to_string();
                if let ReadItem::Entry(e) = item {
                    let same = e.fields.len() * 2 == fields.len()
                        && e.fields
                            .iter()
                            .zip(fields.chunks_exact(2))
                            .all(|((k, v), kv)| k.as_slice() == kv[0] && v.as_slice() == kv[1]);
                    if same {
                        return Ok(Some(e.id.to_string()));
                    }
                }
            }
            if n < PAGE {
                break;
            }
            looked += n;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use millrace_testkit::RedisServer;

    /// A pending entry of stream `s`, group `g`, consumer `c`.
    async fn pending_entry(con: &mut redis::aio::MultiplexedConnection) -> EntryId {
        let id: String = redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg("n")
            .arg("1")
            .query_async(con)
            .await
            .unwrap();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("s")
            .arg("g")
            .arg("0")
            .query_async(con)
            .await
            .unwrap();
        let _: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg("s")
            .arg(">")
            .query_async(con)
            .await
            .unwrap();
        id.parse().unwrap()
    }

    async fn xlen(con: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
        redis::cmd("XLEN").arg(key).query_async(con).await.unwrap()
    }

    /// A step move whose first `XADD` landed but whose reply was lost (the `XADD` is made by hand
    /// after the marker, as the lost attempt would have) is retried: the retry finds the copy,
    /// only acknowledges, and the dead-letter stream holds one copy.
    #[tokio::test]
    async fn a_retried_step_move_after_a_lost_xadd_reply_adds_no_second_copy() {
        let server = RedisServer::start();
        let mut con = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let id = pending_entry(&mut con).await;
        let _: String = redis::cmd("XADD")
            .arg("s:dlq")
            .arg("*")
            .arg("older")
            .arg("letter")
            .query_async(&mut con)
            .await
            .unwrap();
        let transfer = Transfer {
            from: b"s",
            to: b"s:dlq",
            id,
            release: Release::Ack(b"g"),
            in_steps: true,
        };
        let fields: [&[u8]; 4] = [b"millrace.reason", b"poison", b"n", b"1"];
        // The lost attempt: the marker taken, then its XADD landed.
        let mut marker = Marker(Some(transfer.last_id(&mut con).await.unwrap()));
        let mut xadd = redis::cmd("XADD");
        xadd.arg("s:dlq").arg("*");
        for f in fields {
            xadd.arg(f);
        }
        let landed: String = xadd.query_async(&mut con).await.unwrap();
        // The retry.
        let moved = transfer
            .run(&mut con, &fields, false, &mut marker)
            .await
            .unwrap();
        assert_eq!(moved.as_deref(), Some(landed.as_str()), "the copy found");
        assert_eq!(
            xlen(&mut con, "s:dlq").await,
            2,
            "the older letter and one copy"
        );
        let pending: Vec<Value> = redis::cmd("XPENDING")
            .arg("s")
            .arg("g")
            .arg("-")
            .arg("+")
            .arg(10)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(pending.is_empty(), "acknowledged");
        // Once moved, a further attempt finds nothing pending and changes nothing.
        let again = transfer
            .run(&mut con, &fields, false, &mut marker)
            .await
            .unwrap();
        assert_eq!(again, None);
        assert_eq!(xlen(&mut con, "s:dlq").await, 2);
    }
}
