//! Typed wrappers over the stream commands millrace sends (XREADGROUP, XACK, XAUTOCLAIM, XPENDING,
//! XCLAIM, XGROUP CREATE), the consumer reaper and the checked trim. Every function is generic over the connection,
//! so a cluster connection plugs in without touching the consumer.

pub(crate) mod delay;
mod ownership;
mod reaper;
pub mod reply;
pub(crate) mod script;
mod trim;

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisResult, Value};

use crate::entry::EntryId;
pub use ownership::set_idle_if_owned;
pub use reaper::{
    idle_consumers, reap_consumer, reap_idle_consumers, successor, IdleConsumer, ReapOutcome,
    Reaped,
};
pub use reply::{
    parse_autoclaim, parse_entries, parse_pending, parse_read_reply, AutoClaim, PendingRow,
    ReadItem,
};
pub use trim::{trim_if_processed, TrimVerdict};

/// At most this many ids go into one XACK/XCLAIM call.
pub(crate) const IDS_PER_CALL: usize = 2_000;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS`: what every read sends before its keys and ids.
fn xreadgroup_head(group: &str, consumer: &str, count: usize, block: Option<Duration>) -> Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(millis(block).max(1));
    }
    cmd.arg("STREAMS");
    cmd
}

/// Builds `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS key id`.
pub fn xreadgroup_cmd(
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
    block: Option<Duration>,
    id: &str,
) -> Cmd {
    let mut cmd = xreadgroup_head(group, consumer, count, block);
    cmd.arg(stream).arg(id);
    cmd
}

/// Builds `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS s1 … sk > … >`: new entries of several
/// streams in one call (at most `count` from each). On a Redis Cluster the streams must share a
/// slot.
pub(crate) fn xreadgroup_streams_cmd<S: AsRef<str>>(
    streams: &[S],
    group: &str,
    consumer: &str,
    count: usize,
    block: Option<Duration>,
) -> Cmd {
    let mut cmd = xreadgroup_head(group, consumer, count, block);
    for stream in streams {
        cmd.arg(stream.as_ref());
    }
    for _ in streams {
        cmd.arg(">");
    }
    cmd
}

/// Runs a read command and parses its reply tolerantly.
pub async fn read<C: ConnectionLike + Send>(conn: &mut C, cmd: &Cmd) -> RedisResult<Vec<ReadItem>> {
    let v = conn.req_packed_command(cmd).await?;
    if let Value::ServerError(e) = v {
        return Err(e.into());
    }
    Ok(reply::parse_read_reply(v))
}

/// `XACK` in chunks; returns how many entries Redis removed from the pending list. A return of 0
/// says nothing about health (a missing group also gives 0).
pub async fn xack<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    ids: &[EntryId],
) -> RedisResult<usize> {
    let mut acked = 0;
    for chunk in ids.chunks(IDS_PER_CALL) {
        let n: usize = redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(chunk)
            .query_async(conn)
            .await?;
        acked += n;
    }
    Ok(acked)
}

/// `XAUTOCLAIM key group consumer min-idle start COUNT n`.
pub async fn xautoclaim<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    start: EntryId,
    count: usize,
) -> RedisResult<AutoClaim> {
    let v: Value = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(millis(min_idle))
        .arg(start)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply::parse_autoclaim(v))
}

/// Extended `XPENDING key group [IDLE ms] start end count [consumer]`: ids with their delivery counts.
#[allow(clippy::too_many_arguments)]
pub async fn xpending_range<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    min_idle: Option<Duration>,
    start: EntryId,
    end: EntryId,
    count: usize,
    consumer: Option<&str>,
) -> RedisResult<Vec<PendingRow>> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group);
    if let Some(idle) = min_idle {
        cmd.arg("IDLE").arg(millis(idle));
    }
    cmd.arg(start).arg(end).arg(count);
    if let Some(c) = consumer {
        cmd.arg(c);
    }
    let v: Value = cmd.query_async(conn).await?;
    Ok(reply::parse_pending(v))
}

/// `XGROUP CREATE key group start [MKSTREAM]`; returns false when the group already existed (BUSYGROUP).
pub async fn xgroup_create<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    start: &str,
    mkstream: bool,
) -> RedisResult<bool> {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE").arg(stream).arg(group).arg(start);
    if mkstream {
        cmd.arg("MKSTREAM");
    }
    match cmd.query_async::<Value>(conn).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}
