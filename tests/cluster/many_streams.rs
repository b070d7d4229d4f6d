//! A multi-stream consumer on a cluster: streams that share a slot share one read; streams in
//! other slots are read apart, each from the master that serves it.

use std::time::Duration;

use millrace_testkit::eventually;

use crate::common::{
    add_one_to_each, cluster, connect, start_recording_set, stream_on, Seen, WAIT,
};

/// Blocked or last-run `XREADGROUP` connections on node `index`.
async fn readers_on(cluster: &millrace_testkit::RedisCluster, index: usize) -> usize {
    let mut con = cluster
        .node(index)
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the node");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut con)
        .await
        .expect("CLIENT LIST");
    list.matches("cmd=xreadgroup").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_one_slot_share_a_read_and_other_slots_are_read_apart() {
    let cluster = cluster();
    let masters = cluster.masters();
    // Three streams with one hash tag (one slot, one master), and one stream on each other master.
    let tagged: Vec<String> = (1..=3).map(|i| format!("{{tenants}}:{i}:events")).collect();
    let home = cluster.owner_of_key(&tagged[0]);
    let apart: Vec<String> = masters
        .iter()
        .filter(|m| **m != home)
        .map(|m| stream_on(&cluster, *m, "tenant"))
        .collect();
    let streams: Vec<String> = tagged.iter().chain(&apart).cloned().collect();
    let seen = Seen::default();
    let app = start_recording_set(&cluster, &streams, Duration::from_millis(500), &seen).await;
    let mut con = connect(&cluster).await;
    let added = add_one_to_each(&mut con, &streams).await;
    seen.wait_for_all(&added).await;
    // One read for the three tagged streams on their master, one for each other stream on its
    // own (the replays' connections have closed).
    eventually(WAIT, "one read per slot", || {
        let cluster = &cluster;
        let apart_masters: Vec<usize> = masters.iter().copied().filter(|m| *m != home).collect();
        async move {
            let mut ok = readers_on(cluster, home).await == 1;
            for m in apart_masters {
                ok &= readers_on(cluster, m).await == 1;
            }
            ok
        }
    })
    .await;
    assert_eq!(app.streams_of("g", "c").len(), 5);
    app.shutdown().await.expect("shutdown");
}
