//! The stream's owner changes under load: a graceful failover, kill -9 of the master (its replica
//! promoted), a live migration of the stream's slot. The consumer follows the owner without a
//! restart of the application; Redis says afterwards that nothing was lost and nothing is pending.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::block_in_place;

use crate::common::{
    all_handled, cluster, connect, flaky, init_tracing, patient, stream_on, wait_running, Misfires,
    Producer, Seen, WAIT,
};

/// Owner changes never restart the consumer: only the handler's deliberate panics do (each
/// counted once the supervisor has restarted the consumer).
async fn restarts_are_the_panics(app: &millrace::Supervisor, misfires: &Misfires) {
    let restarts = || app.health().iter().map(|h| h.restarts_total).sum::<u64>();
    let panics = || misfires.panicked.load(Ordering::SeqCst) as u64;
    millrace_testkit::eventually(WAIT, "one restart per panic", || {
        let counted = restarts() >= panics();
        async move { counted }
    })
    .await;
    assert_eq!(restarts(), panics(), "restarts: {:?}", app.health());
}

/// Waits until the consumers have handled at least `n` entries.
async fn handled_at_least(seen: &Seen, n: usize) {
    millrace_testkit::eventually(WAIT, &format!("{n} entries handled"), || {
        let got = seen.counts().len();
        async move { got >= n }
    })
    .await;
}

/// One consumer of `stream` under a steady producer, with the handler failing and panicking now
/// and then: started, reading, and past its first 50 entries.
struct Drill {
    stream: String,
    con: redis::cluster_async::ClusterConnection,
    seen: Seen,
    misfires: Arc<Misfires>,
    app: millrace::Supervisor,
    producer: Producer,
}

impl Drill {
    /// `replicated`: the producer confirms every entry with `WAIT` (for faults that may lose
    /// writes a replica had not received).
    async fn start(
        cluster: &millrace_testkit::RedisCluster,
        stream: String,
        replicated: bool,
    ) -> Drill {
        let con = connect(cluster).await;
        let (seen, misfires) = (Seen::default(), Arc::new(Misfires::default()));
        let app = millrace::Supervisor::builder()
            .redis_cluster(cluster.seed_urls())
            .restart_policy(patient())
            .consumer(
                flaky(&stream, "c", &seen, &misfires)
                    .reconnect_backoff_max(Duration::from_millis(500)),
            )
            .start()
            .await
            .expect("start");
        wait_running(&app).await;
        let slot = cluster.keyslot(&stream);
        let producer = Producer::start(con.clone(), stream.clone(), slot, replicated);
        handled_at_least(&seen, 50).await;
        Drill {
            stream,
            con,
            seen,
            misfires,
            app,
            producer,
        }
    }

    /// Waits until `n` more entries than now have been handled.
    async fn handles_more(&self, n: usize) {
        let before = self.seen.counts().len();
        handled_at_least(&self.seen, before + n).await;
    }

    /// Stops the producer and checks from Redis that every confirmed entry was handled and none is
    /// pending, and that the consumer restarted once per panic and never for the fault. Prints the
    /// fault's numbers for the test log.
    #[allow(clippy::print_stderr)]
    async fn finish(self, fault: &str) {
        let added = self.producer.stop().await;
        let duplicates = all_handled(&self.con, &self.stream, &self.seen, &added).await;
        eprintln!(
            "{fault}: {} entries, {} failed batches, {} panics, {duplicates} duplicates",
            added.len(),
            self.misfires.failed.load(Ordering::SeqCst),
            self.misfires.panicked.load(Ordering::SeqCst)
        );
        restarts_are_the_panics(&self.app, &self.misfires).await;
        // The fault moved the stream's owner: the consumer followed it, never took it for a
        // lost group (which would recreate the group and read the stream again from its start).
        let recreated: Vec<u64> = self
            .app
            .health()
            .iter()
            .map(|h| h.counters.group_recreated)
            .collect();
        assert!(
            recreated.iter().all(|&n| n == 0),
            "{fault}: groups recreated {recreated:?}"
        );
        self.app.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_of_the_streams_shard_loses_nothing() {
    let cluster = cluster();
    let master = cluster.masters()[0];
    let drill = Drill::start(&cluster, stream_on(&cluster, master, "orders"), false).await;
    let began = Instant::now();
    let promoted = block_in_place(|| cluster.failover(master));
    assert_eq!(cluster.owner_of_key(&drill.stream), promoted);
    drill.handles_more(50).await;
    eprintln!(
        "failover: handling again {:?} after it began",
        began.elapsed()
    );
    drill.finish("failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_of_the_streams_slot_loses_nothing() {
    let cluster = cluster();
    let masters = cluster.masters();
    let drill = Drill::start(&cluster, stream_on(&cluster, masters[0], "orders"), false).await;
    block_in_place(|| cluster.migrate_slot(cluster.keyslot(&drill.stream), masters[1]));
    assert_eq!(cluster.owner_of_key(&drill.stream), masters[1]);
    drill.handles_more(50).await;
    drill.finish("migration").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_streams_master_loses_no_replicated_entry() {
    let mut cluster = cluster();
    let master = cluster.masters()[0];
    let drill = Drill::start(&cluster, stream_on(&cluster, master, "orders"), true).await;
    let began = Instant::now();
    let promoted = block_in_place(|| cluster.kill_master(master));
    assert_eq!(cluster.owner_of_key(&drill.stream), promoted);
    drill.handles_more(1).await;
    eprintln!(
        "kill -9: handling again {:?} after the kill",
        began.elapsed()
    );
    // The killed node comes back as the new master's replica, so `WAIT 1` confirms entries again.
    block_in_place(|| cluster.restart(master));
    drill.handles_more(20).await;
    drill.finish("kill -9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_a_master_is_reported_in_health_not_a_crash_loop() {
    let mut cluster = cluster();
    let master = cluster.masters()[0];
    let stream = stream_on(&cluster, master, "orders");
    let (seen, misfires) = (Seen::default(), Arc::new(Misfires::default()));
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .restart_policy(patient())
        .consumer(
            flaky(&stream, "c", &seen, &misfires).reconnect_backoff_max(Duration::from_millis(500)),
        )
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    // The shard loses its replica, then its master: no node can take over its slots.
    for node in cluster.replicas_of(master) {
        cluster.kill(node);
    }
    cluster.kill(master);
    millrace_testkit::eventually(WAIT, "health shows the consumer reconnecting", || {
        let health = app.health();
        async move {
            health.iter().all(|h| {
                h.state == millrace::ConsumerState::Reconnecting
                    && h.counters.reconnects >= 3
                    && h.last_error.is_some()
            })
        }
    })
    .await;
    let health = app.health();
    eprintln!("shard down: {:?}", health[0].last_error);
    restarts_are_the_panics(&app, &misfires).await;
    app.shutdown().await.expect("a bounded shutdown");
}

/// The stream's master node is restarted (SIGTERM, then started again on its port, with its AOF).
/// The consumer loses its connection, looks the owner up again (the same node, or its replica if
/// the cluster promoted it meanwhile) and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_streams_master_node_loses_nothing() {
    init_tracing();
    let mut cluster = millrace_testkit::RedisCluster::builder()
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg("always")
        .start();
    let master = cluster.masters()[0];
    // Entries confirmed with `WAIT`: safe whether the node is back in time or its replica is
    // promoted meanwhile.
    let drill = Drill::start(&cluster, stream_on(&cluster, master, "orders"), true).await;
    block_in_place(|| cluster.restart(master));
    drill.handles_more(20).await;
    drill.finish("master restart").await;
}
