//! Shared helpers: a cluster per test, a producer that keeps adding entries, and a handler that
//! records what it saw.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace::{Batch, ConsumerSpec, EntryId, HandlerResult, RawEntry, StartId, Supervisor};
use millrace_testkit::RedisCluster;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub(crate) fn cluster() -> RedisCluster {
    init_tracing();
    RedisCluster::start()
}

/// The test's own cluster connection, with a generous response timeout for a loaded machine.
pub(crate) async fn connect(cluster: &RedisCluster) -> ClusterConnection {
    let mut builder = redis::cluster::ClusterClientBuilder::new(cluster.seed_urls())
        .response_timeout(Duration::from_secs(10));
    if let Some(ca) = cluster.ca_cert_path() {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(ca).expect("the CA certificate")),
        });
    }
    builder
        .build()
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("cluster connection")
}

/// Adds one entry to each of `streams`, with ids told apart across them (`1-1`, `1-2`, …), so
/// each stream's entry counts on its own.
pub(crate) async fn add_one_to_each(
    con: &mut ClusterConnection,
    streams: &[String],
) -> Vec<EntryId> {
    let mut added = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        let id: String = redis::cmd("XADD")
            .arg(stream)
            .arg(format!("1-{}", i + 1))
            .arg("n")
            .arg(1)
            .query_async(con)
            .await
            .expect("XADD");
        added.push(id.parse().expect("an id"));
    }
    added
}

/// A stream name (`{prefix}-N`) whose slot is served by `master`.
pub(crate) fn stream_on(cluster: &RedisCluster, master: usize, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| cluster.owner_of_key(name) == master)
        .expect("some name hashes to every master")
}

/// What the handler saw: entry ids in order (repeats are duplicates).
#[derive(Clone, Default)]
pub(crate) struct Seen(Arc<Mutex<Vec<EntryId>>>);

impl Seen {
    pub(crate) fn record(&self, batch: &Batch<RawEntry>) {
        self.0
            .lock()
            .unwrap()
            .extend(batch.iter().map(|entry| entry.id));
    }

    pub(crate) fn counts(&self) -> HashMap<EntryId, usize> {
        let mut counts = HashMap::new();
        for id in self.0.lock().unwrap().iter() {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    /// Waits until every one of `ids` was handled.
    pub(crate) async fn wait_for_all(&self, ids: &[EntryId]) {
        millrace_testkit::eventually(WAIT, "an entry of every stream handled", || {
            let counts = self.counts();
            let done = ids.iter().all(|id| counts.contains_key(id));
            async move { done }
        })
        .await;
    }
}

/// A consumer of `stream` that records and acknowledges everything, starting at the beginning.
pub(crate) fn recording(stream: &str, consumer: &str, seen: &Seen) -> ConsumerSpec {
    let seen = seen.clone();
    ConsumerSpec::new(stream, "g", consumer)
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(500))
        .claim_min_idle(Duration::from_secs(600))
        .handler(move |batch: Batch<RawEntry>| {
            seen.record(&batch);
            futures::future::ready(HandlerResult::Ok)
        })
}

/// Every how many handler calls a [`flaky`] handler fails.
pub(crate) const FAIL_EVERY: usize = 25;
/// Every how many handler calls a [`flaky`] handler panics (unless it fails).
pub(crate) const PANIC_EVERY: usize = 40;

/// How often a [`flaky`] handler failed and panicked.
#[derive(Default)]
pub(crate) struct Misfires {
    pub(crate) failed: std::sync::atomic::AtomicUsize,
    pub(crate) panicked: std::sync::atomic::AtomicUsize,
}

/// A restart policy that lets a test's deliberate panics restart the consumer as often as they
/// come, quickly.
pub(crate) fn patient() -> millrace::RestartPolicy {
    let mut policy = millrace::RestartPolicy::default();
    policy.max_restarts = 1_000;
    policy.backoff_initial = Duration::from_millis(10);
    policy.backoff_max = Duration::from_millis(100);
    policy
}

/// A consumer of `stream` whose handler fails every [`FAIL_EVERY`]-th call (nothing acknowledged;
/// the entries come back through a claim a second later), panics every [`PANIC_EVERY`]-th (the
/// consumer restarts and replays its own pending entries), and records and acknowledges the rest:
/// faults under load with workers failing and panicking at a low rate.
pub(crate) fn flaky(
    stream: &str,
    consumer: &str,
    seen: &Seen,
    misfires: &Arc<Misfires>,
) -> ConsumerSpec {
    let (seen, misfires) = (seen.clone(), misfires.clone());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    ConsumerSpec::new(stream, "g", consumer)
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(500))
        .claim_interval(Duration::from_millis(200))
        .claim_min_idle(Duration::from_secs(1))
        .max_deliveries(1_000)
        .handler(move |batch: Batch<RawEntry>| {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let result = if call.is_multiple_of(FAIL_EVERY) {
                misfires.failed.fetch_add(1, Ordering::SeqCst);
                HandlerResult::err("failing on purpose")
            } else if call.is_multiple_of(PANIC_EVERY) {
                misfires.panicked.fetch_add(1, Ordering::SeqCst);
                panic!("panicking on purpose");
            } else {
                seen.record(&batch);
                HandlerResult::Ok
            };
            futures::future::ready(result)
        })
}

/// Adds entries to one stream until stopped, keeping the ids the cluster confirmed. With
/// `replicated`, an entry counts only once `WAIT 1` on its master says a replica has it (an
/// entry a killed master had not replicated may vanish with it, as on any Redis).
pub(crate) struct Producer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<EntryId>>,
}

impl Producer {
    pub(crate) fn start(
        mut con: ClusterConnection,
        stream: String,
        slot: u16,
        replicated: bool,
    ) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut confirmed = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let added: redis::RedisResult<String> = redis::cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("n")
                        .arg(n)
                        .query_async(&mut con)
                        .await;
                    let Ok(id) = added else {
                        // Failing over: redis-rs retries, and a failed add is simply not counted.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let id: EntryId = id.parse().expect("an entry id");
                    if replicated && !replicated_on_master(&mut con, slot).await {
                        continue;
                    }
                    confirmed.push(id);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                confirmed
            }
        });
        Producer { stop, task }
    }

    /// Stops adding and returns the confirmed ids.
    pub(crate) async fn stop(self) -> Vec<EntryId> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the producer")
    }
}

/// `WAIT 1 1000` on the master of `slot`: true when a replica acknowledged every write before it.
async fn replicated_on_master(con: &mut ClusterConnection, slot: u16) -> bool {
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
        slot,
        SlotAddr::Master,
    )));
    let mut wait = redis::cmd("WAIT");
    wait.arg(1).arg(1000);
    matches!(
        con.route_command(wait, routing).await,
        Ok(redis::Value::Int(n)) if n >= 1
    )
}

/// The entries of `stream` pending in group `g`, as Redis counts them.
pub(crate) async fn pending(con: &mut ClusterConnection, stream: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .query_async(con)
        .await
        .expect("XPENDING");
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// Waits until every id in `expected` was handled and nothing is pending in `stream`; returns the
/// number of duplicate deliveries (handled more than once).
pub(crate) async fn all_handled(
    con: &ClusterConnection,
    stream: &str,
    seen: &Seen,
    expected: &[EntryId],
) -> usize {
    millrace_testkit::eventually(WAIT, "every confirmed entry handled, none pending", || {
        let counts = seen.counts();
        let missing = expected
            .iter()
            .filter(|id| !counts.contains_key(id))
            .count();
        let mut con = con.clone();
        let stream = stream.to_owned();
        async move { missing == 0 && pending(&mut con, &stream).await == 0 }
    })
    .await;
    seen.counts().values().map(|n| n - 1).sum()
}

/// Waits until every consumer of `app` is reading.
pub(crate) async fn wait_running(app: &Supervisor) {
    millrace_testkit::eventually(WAIT, "every consumer running", || {
        let ready = app.is_ready();
        async move { ready }
    })
    .await;
}

/// A supervisor on `cluster` with one multi-stream consumer (group `g`, consumer `c`) of
/// `streams` from their beginning, reads blocking `block`, recording into `seen`; returned once
/// every stream's consumer runs.
pub(crate) async fn start_recording_set(
    cluster: &RedisCluster,
    streams: &[String],
    block: Duration,
    seen: &Seen,
) -> Supervisor {
    let seen = seen.clone();
    let app = Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .multi_stream(
            millrace::MultiStreamSpec::new(streams.to_vec(), "g", "c")
                .start_id(StartId::Beginning)
                .block(block)
                .handler(move |batch: Batch<RawEntry>| {
                    seen.record(&batch);
                    futures::future::ready(HandlerResult::Ok)
                }),
        )
        .start()
        .await
        .expect("start on the cluster");
    wait_running(&app).await;
    app
}

/// Starts `builder` with one consumer of a stream on the second master, adds one entry, and
/// checks from Redis that it was handled once and nothing is pending.
pub(crate) async fn one_entry_is_handled(
    cluster: &millrace_testkit::RedisCluster,
    builder: millrace::SupervisorBuilder,
) {
    let stream = stream_on(cluster, cluster.masters()[1], "orders");
    let mut con = connect(cluster).await;
    let seen = Seen::default();
    let app = builder
        .consumer(recording(&stream, "c", &seen))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    let id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("n")
        .arg(1)
        .query_async(&mut con)
        .await
        .expect("XADD");
    let duplicates = all_handled(&con, &stream, &seen, &[id.parse().expect("an id")]).await;
    assert_eq!(duplicates, 0);
    app.shutdown().await.expect("shutdown");
}
