//! Where consumers read on a cluster: each from the master that serves its stream.

use crate::common::{
    all_handled, cluster, connect, one_entry_is_handled, recording, stream_on, wait_running, Seen,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_two_masters_are_consumed_by_one_supervisor() {
    let cluster = cluster();
    let masters = cluster.masters();
    let (first, second) = (
        stream_on(&cluster, masters[0], "orders"),
        stream_on(&cluster, masters[1], "orders"),
    );
    let mut con = connect(&cluster).await;
    let (seen_first, seen_second) = (Seen::default(), Seen::default());
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(recording(&first, "c", &seen_first))
        .consumer(recording(&second, "c", &seen_second))
        .start()
        .await
        .expect("start on the cluster");
    wait_running(&app).await;
    let mut added = Vec::new();
    for stream in [&first, &second] {
        let mut ids = Vec::new();
        for n in 0..50 {
            let id: String = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("n")
                .arg(n)
                .query_async(&mut con)
                .await
                .expect("XADD");
            ids.push(id.parse().expect("an id"));
        }
        added.push(ids);
    }
    let duplicates = all_handled(&con, &first, &seen_first, &added[0]).await
        + all_handled(&con, &second, &seen_second, &added[1]).await;
    assert_eq!(duplicates, 0, "no fault, no duplicates");
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_no_seed_reachable_fails_start_naming_it() {
    crate::common::init_tracing();
    let err = millrace::Supervisor::builder()
        .redis_cluster(["redis://127.0.0.1:1", "redis://127.0.0.1:2"])
        .start()
        .await
        .expect_err("no seed answers");
    let text = err.to_string();
    assert!(err.is_fatal(), "{text}");
    assert!(text.contains("any seed node"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_wakes_the_blocked_read_on_the_streams_master() {
    let cluster = cluster();
    let master = cluster.masters()[2];
    let stream = stream_on(&cluster, master, "orders");
    let seen = Seen::default();
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(recording(&stream, "c", &seen).block(std::time::Duration::from_secs(30)))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    let began = std::time::Instant::now();
    app.shutdown().await.expect("shutdown");
    let took = began.elapsed();
    // `CLIENT UNBLOCK` went to the master the read was blocked on (client ids are per node).
    let mut node = cluster
        .node(master)
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("the master");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut node)
        .await
        .expect("INFO");
    assert!(stats.contains("cmdstat_client|unblock:calls="), "{stats}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "stopped in {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_is_down_at_start_is_skipped() {
    let cluster = cluster();
    // Nothing listens on port 1: the first seed is down, the others answer.
    let mut seeds = vec!["redis://127.0.0.1:1".to_owned()];
    seeds.extend(cluster.seed_urls());
    one_entry_is_handled(
        &cluster,
        millrace::Supervisor::builder().redis_cluster(seeds),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_runs_on_the_streams_master() {
    let cluster = cluster();
    let stream = stream_on(&cluster, cluster.masters()[1], "orders");
    let mut con = connect(&cluster).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .expect("XGROUP CREATE");
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("g")
        .arg("gone")
        .query_async(&mut con)
        .await
        .expect("XGROUP CREATECONSUMER");
    let seen = Seen::default();
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(
            recording(&stream, "c", &seen)
                .claim_interval(std::time::Duration::from_millis(100))
                .claim_min_idle(std::time::Duration::from_millis(100))
                .reap_idle_consumers_after(std::time::Duration::from_millis(200)),
        )
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    millrace_testkit::eventually(crate::common::WAIT, "the idle consumer reaped", || {
        let (mut con, stream) = (con.clone(), stream.clone());
        async move {
            let consumers: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg("g")
                .query_async(&mut con)
                .await
                .expect("XINFO CONSUMERS");
            consumers.len() == 1
        }
    })
    .await;
    assert!(app.health().iter().all(|h| h.restarts_total == 0));
    app.shutdown().await.expect("shutdown");
}

/// The number of client connections each master has.
async fn clients_per_master(cluster: &millrace_testkit::RedisCluster) -> Vec<usize> {
    let mut counts = Vec::new();
    for master in cluster.masters() {
        let mut node = cluster
            .node(master)
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("a master");
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut node)
            .await
            .expect("CLIENT LIST");
        // Less this connection of the test's own.
        counts.push(list.lines().count() - 1);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_left_on_any_master_after_shutdown() {
    let cluster = cluster();
    let masters = cluster.masters();
    let before = clients_per_master(&cluster).await;
    let seen = Seen::default();
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(recording(
            &stream_on(&cluster, masters[0], "orders"),
            "a",
            &seen,
        ))
        .consumer(recording(
            &stream_on(&cluster, masters[1], "orders"),
            "b",
            &seen,
        ))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    let during = clients_per_master(&cluster).await;
    assert!(
        during.iter().zip(&before).all(|(d, b)| d > b),
        "a control connection to every master: {before:?} → {during:?}"
    );
    app.shutdown().await.expect("shutdown");
    millrace_testkit::eventually(crate::common::WAIT, "every connection closed", || {
        let cluster = &cluster;
        let before = before.clone();
        async move { clients_per_master(cluster).await == before }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_on_a_cluster_gets_its_group_back_after_the_owner_says_so() {
    let cluster = cluster();
    let stream = stream_on(&cluster, cluster.masters()[0], "orders");
    let mut con = connect(&cluster).await;
    let seen = Seen::default();
    let app = millrace::Supervisor::builder()
        .redis_cluster(cluster.seed_urls())
        .consumer(recording(&stream, "c", &seen))
        .start()
        .await
        .expect("start");
    wait_running(&app).await;
    // The blocked read gets `UNBLOCKED the stream key no longer exists`, as after a migration: the
    // consumer looks the owner up first, and recreates the group only once the owner answers
    // NOGROUP.
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .expect("DEL");
    millrace_testkit::eventually(crate::common::WAIT, "the group recreated", || {
        let health = app.health();
        async move {
            health
                .iter()
                .all(|h| h.counters.group_recreated == 1 && h.is_running())
        }
    })
    .await;
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
    assert!(app.health().iter().all(|h| h.restarts_total == 0));
    app.shutdown().await.expect("shutdown");
}
