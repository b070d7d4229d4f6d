//! Dead letters: the atomic move of an entry to the dead-letter stream, and the entry format.
//!
//! A dead-letter entry starts with [`META_FIELDS`] in this order, then the original fields in their
//! original order:
//!
//! | field | value |
//! |---|---|
//! | `millrace.source_stream` | the stream the entry came from |
//! | `millrace.source_id` | its id there |
//! | `millrace.group` | the consumer group |
//! | `millrace.consumer` | the consumer that moved it |
//! | `millrace.deliveries` | Redis's delivery count at the move (empty when unknown) |
//! | `millrace.reason` | why it was moved |
//! | `millrace.dead_lettered_at_ms` | when, in Unix milliseconds |

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::entry::{EntryId, RawEntry};

/// The metadata field names, in the order they lead every dead-letter entry.
pub const META_FIELDS: [&str; 7] = [
    "millrace.source_stream",
    "millrace.source_id",
    "millrace.group",
    "millrace.consumer",
    "millrace.deliveries",
    "millrace.reason",
    "millrace.dead_lettered_at_ms",
];

/// `move`: if the entry is still pending in the group, XADD it to the dead-letter stream and XACK it,
/// atomically. Returns 1 when moved, 0 when it was no longer pending (someone acked or moved it).
/// A failing XADD (for example OOM) raises before the XACK, so the entry stays pending.
/// `check`: verifies the ACL permissions the move needs, without writing anything.
const MOVE_SCRIPT_SOURCE: &str = r"
if ARGV[1] == 'check' then
  if not redis.acl_check_cmd('XADD', KEYS[2], '*', 'f', 'v') then
    return redis.error_reply('NOPERM this user has no permissions to run XADD on the dead-letter stream ' .. KEYS[2])
  end
  if not redis.acl_check_cmd('XACK', KEYS[1], ARGV[2], '0-1') then
    return redis.error_reply('NOPERM this user has no permissions to run XACK on ' .. KEYS[1])
  end
  if not redis.acl_check_cmd('XRANGE', KEYS[1], '-', '+') then
    return redis.error_reply('NOPERM this user has no permissions to run the \'xrange\' command on ' .. KEYS[1])
  end
  return 1
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[2], ARGV[3], ARGV[3], 1)
if #pending == 0 then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
if ARGV[1] == 'move_id' then
  local found = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
  if found[1] then
    for _, v in ipairs(found[1][2]) do fields[#fields + 1] = v end
  end
end
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[2], ARGV[3])
return 1
";

/// The script's SHA1, for EVALSHA.
static MOVE_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(MOVE_SCRIPT_SOURCE).get_hash().to_owned());

/// Runs the move script: EVALSHA, and EVAL when the server does not have it cached yet (which also
/// caches it). Unlike `redis::Script`, this never needs the `SCRIPT LOAD` permission.
async fn run_script<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &[&str],
    args: &[&[u8]],
) -> RedisResult<i64> {
    let build = |head: &str, body: &str| {
        let mut cmd = redis::cmd(head);
        cmd.arg(body).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        cmd
    };
    match build("EVALSHA", &MOVE_SCRIPT_SHA).query_async(conn).await {
        Err(e) if e.code() == Some("NOSCRIPT") => {
            build("EVAL", MOVE_SCRIPT_SOURCE).query_async(conn).await
        }
        other => other,
    }
}

/// Checks, without writing, that the user may run the dead-letter move (EVALSHA/EVAL, and inside it
/// XADD on the dead-letter stream and XACK on the source).
pub(crate) async fn check_permissions<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    dlq: &str,
    group: &str,
) -> RedisResult<()> {
    run_script(conn, &[stream, dlq], &[b"check", group.as_bytes()])
        .await
        .map(drop)
}

/// What to record with a dead letter.
#[derive(Debug)]
pub(crate) struct DeadLetterInfo<'a> {
    pub(crate) stream: &'a str,
    pub(crate) dlq: &'a str,
    pub(crate) group: &'a str,
    pub(crate) consumer: &'a str,
    pub(crate) deliveries: Option<u64>,
    pub(crate) reason: &'a str,
}

/// Entries with more fields than this are moved in steps instead of by the script: Lua's `unpack`
/// stops near 8,000 values, so the script cannot pass a larger entry to `XADD`.
const SCRIPT_FIELD_LIMIT: usize = 1_000;

/// Moves `entry` to the dead-letter stream (see the module docs for the format).
pub(crate) async fn move_entry<C: ConnectionLike + Send>(
    conn: &mut C,
    info: &DeadLetterInfo<'_>,
    entry: &RawEntry,
) -> RedisResult<bool> {
    if entry.fields.len() > SCRIPT_FIELD_LIMIT {
        return move_large(conn, info, entry).await;
    }
    let id = entry.id.to_string();
    let meta = meta_values(info, &id);
    let mut args: Vec<&[u8]> = Vec::with_capacity(3 + 2 * (meta.len() + entry.fields.len()));
    let mode: &[u8] = if entry.fields.is_empty() {
        b"move_id"
    } else {
        b"move"
    };
    args.extend([mode, info.group.as_bytes(), id.as_bytes()]);
    for (name, value) in META_FIELDS.iter().zip(meta.iter()) {
        args.push(name.as_bytes());
        args.push(value.as_bytes());
    }
    for (k, v) in &entry.fields {
        args.push(k);
        args.push(v);
    }
    let moved = run_script(conn, &[info.stream, info.dlq], &args).await?;
    Ok(moved == 1)
}

/// The metadata values, in [`META_FIELDS`] order.
fn meta_values(info: &DeadLetterInfo<'_>, id: &str) -> [String; 7] {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    [
        info.stream.to_owned(),
        id.to_owned(),
        info.group.to_owned(),
        info.consumer.to_owned(),
        info.deliveries.map(|d| d.to_string()).unwrap_or_default(),
        info.reason.to_owned(),
        now_ms.to_string(),
    ]
}

/// Moves an entry too large for the script, in steps: only if it is still pending in the group,
/// `XADD` to the dead-letter stream, then `XACK`. Nothing is lost (the `XACK` comes after the
/// `XADD`); a crash between the two, or another consumer moving the same entry at the same moment,
/// leaves a second dead letter of it, which shows the same `millrace.source_id`.
async fn move_large<C: ConnectionLike + Send>(
    conn: &mut C,
    info: &DeadLetterInfo<'_>,
    entry: &RawEntry,
) -> RedisResult<bool> {
    let pending = crate::streams::xpending_range(
        conn,
        info.stream,
        info.group,
        None,
        entry.id,
        entry.id,
        1,
        None,
    )
    .await?;
    if pending.is_empty() {
        return Ok(false);
    }
    let id = entry.id.to_string();
    let mut xadd = redis::cmd("XADD");
    xadd.arg(info.dlq).arg("*");
    for (name, value) in META_FIELDS.iter().zip(meta_values(info, &id)) {
        xadd.arg(*name).arg(value);
    }
    for (k, v) in &entry.fields {
        xadd.arg(k).arg(v);
    }
    xadd.query_async::<redis::Value>(conn).await?;
    crate::streams::xack(conn, info.stream, info.group, &[entry.id]).await?;
    Ok(true)
}

/// Moves a pending entry by id only, with the fields the stream still holds for it (none when the
/// entry is gone).
pub(crate) async fn move_id<C: ConnectionLike + Send>(
    conn: &mut C,
    info: &DeadLetterInfo<'_>,
    id: EntryId,
) -> RedisResult<bool> {
    let found: redis::Value = redis::cmd("XRANGE")
        .arg(info.stream)
        .arg(id)
        .arg(id)
        .query_async(conn)
        .await?;
    let fields = crate::streams::reply::parse_entries(found)
        .into_iter()
        .find_map(|item| match item {
            crate::streams::ReadItem::Entry(e) if e.id == id => Some(e.fields),
            _ => None,
        })
        .unwrap_or_default();
    move_entry(conn, info, &RawEntry::new(id, fields)).await
}

/// A dead-letter entry read back from the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: EntryId,
    /// The stream it came from.
    pub source_stream: String,
    /// Its id in the source stream.
    pub source_id: Option<EntryId>,
    /// The consumer group it failed in.
    pub group: String,
    /// The consumer that moved it.
    pub consumer: String,
    /// Delivery count at the move, when known.
    pub deliveries: Option<u64>,
    /// Why it was moved.
    pub reason: String,
    /// When it was moved (Unix milliseconds).
    pub dead_lettered_at_ms: Option<u64>,
    /// The original fields, in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DeadLetter {
    /// Reads a dead-letter entry; `None` when the entry does not start with the metadata fields.
    pub fn parse(entry: &RawEntry) -> Option<DeadLetter> {
        if entry.fields.len() < META_FIELDS.len()
            || entry
                .fields
                .iter()
                .zip(META_FIELDS.iter())
                .any(|((k, _), name)| k.as_slice() != name.as_bytes())
        {
            return None;
        }
        let text = |i: usize| String::from_utf8_lossy(&entry.fields[i].1).into_owned();
        Some(DeadLetter {
            id: entry.id,
            source_stream: text(0),
            source_id: text(1).parse().ok(),
            group: text(2),
            consumer: text(3),
            deliveries: text(4).parse().ok(),
            reason: text(5),
            dead_lettered_at_ms: text(6).parse().ok(),
            fields: entry.fields[META_FIELDS.len()..].to_vec(),
        })
    }
}
