//! The backend against a real Redis Cluster from the testkit: where a consumer's stream is looked
//! up.

use std::time::Duration;

use millrace_testkit::RedisCluster;

use super::{Backend, ConnectionOptions};

/// `calls` of `INFO commandstats`' `cmdstat_cluster|shards` on node `index`.
fn cluster_shards_calls(cluster: &RedisCluster, index: usize) -> u64 {
    let mut con = cluster
        .node(index)
        .client()
        .get_connection()
        .expect("a connection to the node");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_cluster|shards:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A stream's master is asked of the node that serves the stream's slot (the one that knows
/// first where the slot went), not of any node, whose view may be older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_owner_is_asked_of_the_node_serving_its_slot() {
    let cluster =
        tokio::task::block_in_place(|| RedisCluster::builder().replicas_per_master(0).start());
    let backend = Backend::open_cluster(
        &cluster.seed_urls(),
        ConnectionOptions {
            command_timeout: Duration::from_secs(10),
            ..ConnectionOptions::default()
        },
    )
    .expect("backend");
    for stream in ["orders", "payments", "tenant:7:events", "{t}:dlq"] {
        let owner = cluster.owner_of_key(stream);
        let before: Vec<u64> = (0..3).map(|i| cluster_shards_calls(&cluster, i)).collect();
        for _ in 0..10 {
            let node = backend.node_for(stream).await.expect("the owner");
            assert_eq!(
                node.cluster_address().map(|a| a.port),
                Some(cluster.node(owner).port()),
                "{stream}"
            );
        }
        for (i, before) in before.iter().enumerate() {
            let asked = cluster_shards_calls(&cluster, i) - before;
            let expected = if i == owner { 10 } else { 0 };
            assert_eq!(
                asked, expected,
                "{stream}: CLUSTER SHARDS asked of node {i}"
            );
        }
    }
}
