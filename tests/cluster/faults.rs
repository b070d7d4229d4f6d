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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_of_the_streams_shard_loses_nothing() {
    let cluster = cluster();
    let master = cluster.masters()[0];
    let stream = stream_on(&cluster, master, "orders");
    let con = connect(&cluster).await;
    let (seen, misfires) = (Seen::default(), Arc::new(Misfires::default()));
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .restart_policy(patient())
        .consumer(flaky(&stream, "c", &seen, &misfires))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    let producer = Producer::start(con.clone(), stream.clone(), cluster.keyslot(&stream), false);
    handled_at_least(&seen, 50).await;
    let began = Instant::now();
    let promoted = block_in_place(|| cluster.failover(master));
    assert_eq!(cluster.owner_of_key(&stream), promoted);
    let before = seen.counts().len();
    handled_at_least(&seen, before + 50).await;
    let recovered = began.elapsed();
    let added = producer.stop().await;
    let duplicates = all_handled(&con, &stream, &seen, &added).await;
    eprintln!(
        "failover: {} entries, {} failed batches, {} panics, {duplicates} duplicates, handling again {recovered:?} after the failover began",
        added.len(),
        misfires.failed.load(Ordering::SeqCst),
        misfires.panicked.load(Ordering::SeqCst)
    );
    restarts_are_the_panics(&app, &misfires).await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_of_the_streams_slot_loses_nothing() {
    let cluster = cluster();
    let masters = cluster.masters();
    let stream = stream_on(&cluster, masters[0], "orders");
    let slot = cluster.keyslot(&stream);
    let con = connect(&cluster).await;
    let (seen, misfires) = (Seen::default(), Arc::new(Misfires::default()));
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .restart_policy(patient())
        .consumer(flaky(&stream, "c", &seen, &misfires))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    let producer = Producer::start(con.clone(), stream.clone(), slot, false);
    handled_at_least(&seen, 50).await;
    block_in_place(|| cluster.migrate_slot(slot, masters[1]));
    assert_eq!(cluster.owner_of_key(&stream), masters[1]);
    let before = seen.counts().len();
    handled_at_least(&seen, before + 50).await;
    let added = producer.stop().await;
    let duplicates = all_handled(&con, &stream, &seen, &added).await;
    eprintln!(
        "migration: {} entries, {} failed batches, {} panics, {duplicates} duplicates",
        added.len(),
        misfires.failed.load(Ordering::SeqCst),
        misfires.panicked.load(Ordering::SeqCst)
    );
    restarts_are_the_panics(&app, &misfires).await;
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_streams_master_loses_no_replicated_entry() {
    let mut cluster = cluster();
    let master = cluster.masters()[0];
    let stream = stream_on(&cluster, master, "orders");
    let con = connect(&cluster).await;
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
    let producer = Producer::start(con.clone(), stream.clone(), cluster.keyslot(&stream), true);
    handled_at_least(&seen, 50).await;
    let began = Instant::now();
    let before = seen.counts().len();
    let promoted = block_in_place(|| cluster.kill_master(master));
    assert_eq!(cluster.owner_of_key(&stream), promoted);
    handled_at_least(&seen, before + 1).await;
    let recovered = began.elapsed();
    // The killed node comes back as the new master's replica, so `WAIT 1` confirms entries again.
    block_in_place(|| cluster.restart(master));
    let before = seen.counts().len();
    handled_at_least(&seen, before + 20).await;
    let added = producer.stop().await;
    let duplicates = all_handled(&con, &stream, &seen, &added).await;
    eprintln!(
        "kill -9: {} replicated entries, {} failed batches, {} panics, {duplicates} duplicates, handling again {recovered:?} after the kill",
        added.len(),
        misfires.failed.load(Ordering::SeqCst),
        misfires.panicked.load(Ordering::SeqCst)
    );
    restarts_are_the_panics(&app, &misfires).await;
    app.shutdown().await.expect("shutdown");
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
    let stream = stream_on(&cluster, master, "orders");
    let con = connect(&cluster).await;
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
    // Entries confirmed with `WAIT`: safe whether the node is back in time or its replica is
    // promoted meanwhile.
    let producer = Producer::start(con.clone(), stream.clone(), cluster.keyslot(&stream), true);
    handled_at_least(&seen, 50).await;
    block_in_place(|| cluster.restart(master));
    let before = seen.counts().len();
    handled_at_least(&seen, before + 20).await;
    let added = producer.stop().await;
    let duplicates = all_handled(&con, &stream, &seen, &added).await;
    eprintln!(
        "master restart: {} entries, {} failed batches, {} panics, {duplicates} duplicates",
        added.len(),
        misfires.failed.load(Ordering::SeqCst),
        misfires.panicked.load(Ordering::SeqCst)
    );
    restarts_are_the_panics(&app, &misfires).await;
    app.shutdown().await.expect("shutdown");
}
