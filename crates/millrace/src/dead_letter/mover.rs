//! Moving a consumer's entry to the dead-letter stream (what a consumer does with poison and
//! undecodable entries).

use redis::aio::ConnectionLike;
use redis::RedisResult;

use super::transfer::{Marker, Release, Transfer, SCRIPT};
use super::META_FIELDS;
use crate::entry::RawEntry;

/// Checks, without writing, that the user may run the dead-letter move (EVALSHA/EVAL, and inside it
/// XADD on the dead-letter stream and XACK on the source). With `in_steps` (the two streams in
/// different slots of a cluster) the script names only the stream as a key, so it runs on the
/// stream's master, and checks the dead-letter stream's permission by name.
pub(crate) async fn check_permissions<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    dlq: &str,
    group: &str,
    in_steps: bool,
) -> RedisResult<()> {
    if in_steps {
        return SCRIPT
            .run::<redis::Value, _, _, _>(conn, &[stream], &["check", group, "0-0", "0", dlq])
            .await
            .map(drop);
    }
    SCRIPT
        .run::<redis::Value, _, _, _>(conn, &[stream, dlq], &["check", group, "0-0", "0"])
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
    /// When it was dead-lettered, in Unix milliseconds: fixed at the first attempt, so every
    /// attempt of a retried move writes the same fields.
    pub(crate) at_ms: u128,
    /// Add to the dead-letter stream, then acknowledge, in two commands: for a stream and a
    /// dead-letter stream in different slots of a cluster (see `cluster::Colocation`).
    pub(crate) in_steps: bool,
}

/// Moves `entry` to the dead-letter stream (see the module docs for the format), if it is still
/// pending in the group. Returns false when it was not (someone acked or moved it meanwhile). An
/// entry without fields gets the fields the stream still holds for it. `marker` is kept between
/// the attempts of one move (see [`Marker`]).
pub(crate) async fn move_entry<C: ConnectionLike + Send>(
    conn: &mut C,
    info: &DeadLetterInfo<'_>,
    entry: &RawEntry,
    marker: &mut Marker,
) -> RedisResult<bool> {
    let id = entry.id.to_string();
    let meta = meta_values(info, &id);
    let mut fields: Vec<&[u8]> = Vec::with_capacity(2 * (meta.len() + entry.fields.len()));
    for (name, value) in META_FIELDS.iter().zip(meta.iter()) {
        fields.push(name.as_bytes());
        fields.push(value.as_bytes());
    }
    for (k, v) in &entry.fields {
        fields.push(k);
        fields.push(v);
    }
    let transfer = Transfer {
        from: info.stream.as_bytes(),
        to: info.dlq.as_bytes(),
        id: entry.id,
        release: Release::Ack(info.group.as_bytes()),
        in_steps: info.in_steps,
    };
    let moved = transfer
        .run(conn, &fields, entry.fields.is_empty(), marker)
        .await?;
    Ok(moved.is_some())
}

/// The metadata values, in [`META_FIELDS`] order.
fn meta_values(info: &DeadLetterInfo<'_>, id: &str) -> [String; 7] {
    [
        info.stream.to_owned(),
        id.to_owned(),
        info.group.to_owned(),
        info.consumer.to_owned(),
        info.deliveries.map(|d| d.to_string()).unwrap_or_default(),
        info.reason.to_owned(),
        info.at_ms.to_string(),
    ]
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}
