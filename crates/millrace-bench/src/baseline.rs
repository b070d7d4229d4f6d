//! The hand-written redis-rs loops millrace is compared with.
//!
//! * (a) sequential: `XREADGROUP … COUNT n BLOCK … >`, then one `XACK` with every id of the batch,
//!   on one connection; the reply is walked as a raw `redis::Value`.
//! * (a′) the same with redis-rs's typed stream API (`xread_options` → `StreamReadReply`, `xack`),
//!   which is what the redis-rs documentation shows.
//! * (b) read-ahead: two `XREADGROUP` calls always in flight on the read connection, acks sent on a
//!   second connection without waiting for them; the fastest loop we know for one consumer. The read
//!   connection is a blocking `redis::Connection` on its own thread, so the next read is written
//!   before the previous reply is parsed.
//! * (b′) the same read-ahead on a `MultiplexedConnection`, whose driver parses every reply already
//!   received before writing the next command, so the two reads barely overlap.
//!
//! With several consumers each consumer is a task with its own read connection; (b)'s consumers
//! share one ack connection, as millrace's share one control connection.

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Client, Cmd, Value};

use crate::workload::{take_ids, Progress, Work};
use crate::Res;

static DEPTH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(2);

/// Diagnostics: reads the read-ahead loop keeps in flight (2 unless told otherwise).
pub(crate) fn set_read_ahead_depth(n: usize) {
    DEPTH.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

fn read_ahead_depth() -> usize {
    DEPTH.load(std::sync::atomic::Ordering::Relaxed)
}

/// Which loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loop {
    Sequential,
    SequentialTypedApi,
    /// Blocking connection on a thread of its own: the next read is written as soon as a reply
    /// arrives, before it is processed.
    ReadAhead,
    /// The same with two reads in flight on a `MultiplexedConnection`.
    ReadAheadMultiplexed,
}

/// What every consumer of one run reads.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) client: Client,
    pub(crate) stream: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) count: usize,
    pub(crate) block_ms: u64,
    pub(crate) work: Work,
}

impl Target {
    fn read_cmd(&self, consumer: &str) -> Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&*self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(self.count)
            .arg("BLOCK")
            .arg(self.block_ms)
            .arg("STREAMS")
            .arg(&*self.stream)
            .arg(">");
        cmd
    }
}

/// Runs `consumers` copies of the loop until `progress` reaches its target; returns when the last
/// acknowledgement of the run completed (every consumer has stopped by then).
pub(crate) async fn run(
    kind: Loop,
    target: Target,
    consumers: usize,
    progress: Arc<Progress>,
) -> Res<Instant> {
    let target = Arc::new(target);
    let ack_conn = match kind {
        Loop::ReadAhead | Loop::ReadAheadMultiplexed => {
            Some(crate::workload::connect(&target.client).await?)
        }
        _ => None,
    };
    let mut tasks = Vec::with_capacity(consumers);
    for i in 0..consumers {
        let (target, progress, ack_conn) = (target.clone(), progress.clone(), ack_conn.clone());
        let consumer = format!("c{i}");
        if kind == Loop::ReadAhead {
            let ack_conn = ack_conn.ok_or("read-ahead needs an ack connection")?;
            let handle = tokio::runtime::Handle::current();
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(format!("read-ahead-{i}"))
                .spawn(move || {
                    let r = read_ahead_thread(&target, &consumer, ack_conn, &handle, &progress);
                    let _ = tx.send(r.map_err(|e| e.to_string().into()));
                })?;
            tasks.push(tokio::spawn(async move {
                rx.await.map_err(|_| "read-ahead thread died")?
            }));
            continue;
        }
        tasks.push(tokio::spawn(async move {
            match kind {
                Loop::Sequential => sequential(&target, &consumer, &progress).await,
                Loop::SequentialTypedApi => {
                    sequential_typed_api(&target, &consumer, &progress).await
                }
                Loop::ReadAhead | Loop::ReadAheadMultiplexed => {
                    let ack_conn = ack_conn.ok_or("read-ahead needs an ack connection")?;
                    read_ahead(&target, &consumer, ack_conn, &progress).await
                }
            }
        }));
    }
    let mut last = None;
    for task in tasks {
        let t = task.await.map_err(|e| format!("consumer task: {e}"))??;
        last = last.max(t);
    }
    last.ok_or_else(|| "no consumer acknowledged anything".into())
}

async fn xack(
    conn: &mut MultiplexedConnection,
    target: &Target,
    ids: &[Vec<u8>],
) -> redis::RedisResult<usize> {
    redis::cmd("XACK")
        .arg(&*target.stream)
        .arg(&*target.group)
        .arg(ids)
        .query_async(conn)
        .await
}

/// (a): read, then ack, one after the other, on one connection.
async fn sequential(target: &Target, consumer: &str, progress: &Progress) -> Res<Option<Instant>> {
    let mut conn = crate::workload::connect(&target.client).await?;
    let cmd = target.read_cmd(consumer);
    let mut last_ack = None;
    loop {
        let reply: Value = cmd.query_async(&mut conn).await?;
        let ids = take_ids(reply, &target.work)?;
        if ids.is_empty() {
            if progress.is_done() {
                return Ok(last_ack);
            }
            continue;
        }
        xack(&mut conn, target, &ids).await?;
        last_ack = Some(Instant::now());
        if progress.add(ids.len()) || progress.is_done() {
            return Ok(last_ack);
        }
    }
}

/// (a′): as (a), through redis-rs's typed stream commands.
async fn sequential_typed_api(
    target: &Target,
    consumer: &str,
    progress: &Progress,
) -> Res<Option<Instant>> {
    let mut conn = crate::workload::connect(&target.client).await?;
    let opts = StreamReadOptions::default()
        .group(&*target.group, consumer)
        .count(target.count)
        .block(target.block_ms as usize);
    let mut last_ack = None;
    loop {
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[&*target.stream], &[">"], &opts)
            .await?;
        let ids: Vec<String> = reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(|e| {
                        std::hint::black_box(&e.map);
                        e.id
                    })
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            if progress.is_done() {
                return Ok(last_ack);
            }
            continue;
        }
        let _: usize = conn.xack(&*target.stream, &*target.group, &ids).await?;
        last_ack = Some(Instant::now());
        if progress.add(ids.len()) || progress.is_done() {
            return Ok(last_ack);
        }
    }
}

/// (b): two reads always in flight on a blocking read connection owned by this thread; as soon as
/// a reply is in, the next read is written, then the batch is processed; acks go to `ack_conn` on
/// the runtime and are not awaited before the next batch.
fn read_ahead_thread(
    target: &Arc<Target>,
    consumer: &str,
    ack_conn: MultiplexedConnection,
    handle: &tokio::runtime::Handle,
    progress: &Progress,
) -> Res<Option<Instant>> {
    let mut conn = target.client.get_connection()?;
    conn.set_read_timeout(Some(
        std::time::Duration::from_millis(target.block_ms) + std::time::Duration::from_secs(5),
    ))?;
    let packed = target.read_cmd(consumer).get_packed_command();
    for _ in 0..read_ahead_depth() {
        conn.send_packed_command(&packed)?;
    }
    let mut acks = Vec::new();
    loop {
        let reply = conn
            .recv_response()
            .map_err(|e| format!("read-ahead {consumer}: XREADGROUP reply: {e}"))?;
        if !progress.is_done() {
            conn.send_packed_command(&packed)?;
        }
        let ids = take_ids(reply, &target.work)?;
        let stopping = if ids.is_empty() {
            progress.is_done()
        } else {
            let n = ids.len();
            let (target, mut ack_conn) = (target.clone(), ack_conn.clone());
            acks.push(handle.spawn(async move {
                xack(&mut ack_conn, &target, &ids)
                    .await
                    .map(|_| Instant::now())
            }));
            progress.add(n) || progress.is_done()
        };
        if stopping {
            break;
        }
    }
    // Reads still in flight are abandoned with the connection: there is nothing left to read.
    drop(conn);
    let mut last = None;
    for ack in acks {
        let t = handle
            .block_on(ack)
            .map_err(|e| format!("ack task: {e}"))?
            .map_err(|e| format!("read-ahead {consumer}: XACK: {e}"))?;
        last = last.max(Some(t));
    }
    Ok(last)
}

/// (b′): two reads always in flight on the read connection (a `MultiplexedConnection`); acks on
/// `ack_conn`, not awaited before the next batch.
async fn read_ahead(
    target: &Target,
    consumer: &str,
    ack_conn: MultiplexedConnection,
    progress: &Progress,
) -> Res<Option<Instant>> {
    let conn = crate::workload::connect(&target.client).await?;
    let cmd = Arc::new(target.read_cmd(consumer));
    let read = || {
        let (mut conn, cmd) = (conn.clone(), cmd.clone());
        async move { cmd.query_async::<Value>(&mut conn).await }
    };
    let mut reads = FuturesOrdered::new();
    for _ in 0..read_ahead_depth() {
        reads.push_back(read());
    }
    let mut acks = FuturesUnordered::new();
    let mut last_ack = None;
    let mut stopping = false;
    loop {
        if stopping && acks.is_empty() {
            return Ok(last_ack);
        }
        tokio::select! {
            Some(reply) = reads.next(), if !stopping => {
                let ids = take_ids(reply?, &target.work)?;
                if ids.is_empty() {
                    stopping = progress.is_done();
                } else {
                    let n = ids.len();
                    let mut ack_conn = ack_conn.clone();
                    acks.push(async move { xack(&mut ack_conn, target, &ids).await });
                    stopping = progress.add(n) || progress.is_done();
                }
                if !stopping {
                    reads.push_back(read());
                }
            }
            Some(acked) = acks.next() => {
                acked?;
                last_ack = Some(Instant::now());
            }
        }
    }
}
