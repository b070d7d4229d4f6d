//! Shared helpers: a server per test, stream commands, and a recording handler.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{Batch, EntryId, HandlerResult, RawEntry, Source};
use millrace_testkit::RedisServer;
use redis::aio::MultiplexedConnection;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub(crate) async fn server() -> (RedisServer, MultiplexedConnection) {
    init_tracing();
    let server = RedisServer::start();
    let con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (server, con)
}

pub(crate) async fn xadd(
    con: &mut MultiplexedConnection,
    stream: &str,
    fields: &[(&str, &str)],
) -> EntryId {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let id: String = cmd.query_async(con).await.unwrap();
    id.parse().unwrap()
}

pub(crate) async fn xadd_n(
    con: &mut MultiplexedConnection,
    stream: &str,
    n: usize,
) -> Vec<EntryId> {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD").arg(stream).arg("*").arg("n").arg(i);
    }
    let ids: Vec<String> = pipe.query_async(con).await.unwrap();
    ids.into_iter().map(|s| s.parse().unwrap()).collect()
}

pub(crate) async fn create_group(con: &mut MultiplexedConnection, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await
        .unwrap();
}

/// Total pending entries of a group; `u64::MAX` while the group or key does not exist, so a wait for
/// "nothing pending" cannot pass before the consumer has even created its group.
pub(crate) async fn pending(con: &mut MultiplexedConnection, stream: &str, group: &str) -> u64 {
    let r: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
        redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(con)
            .await;
    r.map(|r| r.0).unwrap_or(u64::MAX)
}

/// Pending ids of a group with their owner and delivery count.
pub(crate) async fn pending_rows(
    con: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Vec<millrace::streams::PendingRow> {
    millrace::streams::xpending_range(
        con,
        stream,
        group,
        None,
        EntryId::MIN,
        EntryId::new(u64::MAX, u64::MAX),
        100_000,
        None,
    )
    .await
    .unwrap()
}

pub(crate) async fn command_calls(con: &mut MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let key = format!("cmdstat_{}:calls=", command.to_lowercase());
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What a handler saw: every (entry id, deliveries, source, consumer) in order.
#[derive(Clone, Default)]
pub(crate) struct Seen(pub(crate) Arc<Mutex<Vec<(EntryId, Option<u64>, Source, String)>>>);

impl Seen {
    pub(crate) fn record<M>(&self, batch: &Batch<M>) {
        let mut seen = self.0.lock().unwrap();
        for e in batch {
            seen.push((
                e.id,
                e.deliveries,
                batch.source,
                batch.meta.consumer.to_string(),
            ));
        }
    }

    pub(crate) fn ids(&self) -> Vec<EntryId> {
        self.0.lock().unwrap().iter().map(|s| s.0).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub(crate) fn count_by_id(&self) -> HashMap<EntryId, usize> {
        let mut m = HashMap::new();
        for (id, ..) in self.0.lock().unwrap().iter() {
            *m.entry(*id).or_default() += 1;
        }
        m
    }

    pub(crate) fn all(&self) -> Vec<(EntryId, Option<u64>, Source, String)> {
        self.0.lock().unwrap().clone()
    }
}

/// A handler that records and acks everything.
pub(crate) fn recording(
    seen: &Seen,
) -> impl Fn(Batch<RawEntry>) -> futures::future::Ready<HandlerResult> + Send + Sync + 'static {
    let seen = seen.clone();
    move |batch: Batch<RawEntry>| {
        seen.record(&batch);
        futures::future::ready(HandlerResult::Ok)
    }
}
