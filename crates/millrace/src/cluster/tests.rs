//! The topology module against a real Redis Cluster from the testkit (3 masters, 3 replicas):
//! slots as the server computes them, slot maps as the servers list them, replies as the
//! servers send them, and a redis-rs `ClusterConnection` for control commands following the
//! cluster through a failover and a live migration. One cluster for the whole module.

use std::time::Duration;

use millrace_testkit::{eventually, RedisCluster};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamPendingReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, RedisResult};

use crate::cluster::{
    fetch_slot_map, key_slot, resolve_owner, Action, ClusterReply, Colocation, SlotMap,
};

const WAIT: Duration = Duration::from_secs(15);

/// `err` as a consumer's read meets it: the crate's [`Error`](crate::Error), whose
/// `cluster_action` the consumer asks.
fn as_the_consumer_sees_it(stream: &str, err: redis::RedisError) -> crate::Error {
    let consumer = crate::ConsumerId::new(stream, "g", "blocked");
    crate::error::classify(Some(&consumer), "XREADGROUP", stream, err)
}

/// Runs a blocking testkit helper without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn node_connection(cluster: &RedisCluster, index: usize) -> MultiplexedConnection {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    cluster
        .node(index)
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to a node")
}

async fn blocked_clients(cluster: &RedisCluster, index: usize) -> u64 {
    let mut con = node_connection(cluster, index).await;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut con)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.trim().strip_prefix("blocked_clients:"))
        .and_then(|n| n.parse().ok())
        .expect("blocked_clients")
}

/// Starts `XREADGROUP … BLOCK 0` on its own connection to `index` and waits until the server
/// has it blocked; the task ends with the read's result.
async fn blocked_read(
    cluster: &RedisCluster,
    index: usize,
    stream: &str,
) -> tokio::task::JoinHandle<RedisResult<StreamReadReply>> {
    let mut con = node_connection(cluster, index).await;
    let stream = stream.to_owned();
    let before = blocked_clients(cluster, index).await;
    let task = tokio::spawn(async move {
        let options = StreamReadOptions::default().group("g", "blocked").block(0);
        con.xread_options::<_, _, StreamReadReply>(&[&stream], &[">"], &options)
            .await
    });
    eventually(WAIT, "the read to block", || async {
        blocked_clients(cluster, index).await > before
    })
    .await;
    task
}

/// One stream name per master, by asking the cluster who owns which name.
fn one_stream_per_master(cluster: &RedisCluster) -> Vec<String> {
    let mut names: Vec<(usize, String)> = Vec::new();
    for i in 0.. {
        let name = format!("orders:{i}");
        let owner = cluster.owner_of_key(&name);
        if !names.iter().any(|(o, _)| *o == owner) {
            names.push((owner, name));
        }
        if names.len() == 3 {
            break;
        }
    }
    names.into_iter().map(|(_, n)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_matches_a_real_cluster_and_control_commands_follow_it() {
    let cluster = blocking(RedisCluster::start);
    let mut any = node_connection(&cluster, 0).await;

    // Slots: our CRC16 and hash tags agree with CLUSTER KEYSLOT.
    let mut keys: Vec<Vec<u8>> = [
        "",
        "foo",
        "{a}b",
        "a{}b",
        "{}{b}",
        "{{x}}",
        "x{y",
        "y}x{",
        "orders:new",
        "orders:new:dlq",
        "{orders:new}:dlq",
        "\u{e9}t\u{e9}",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    keys.push(vec![0xff, 0, b'{', 0x80, b'}', 7]);
    keys.extend((0..300).map(|i| format!("key:{i}").into_bytes()));
    for key in &keys {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut any)
            .await
            .expect("CLUSTER KEYSLOT");
        assert_eq!(key_slot(key), slot, "{:?}", String::from_utf8_lossy(key));
    }

    // Slot maps: CLUSTER SHARDS and CLUSTER SLOTS both name the master the kit finds.
    let from_shards = fetch_slot_map(&mut any).await.expect("CLUSTER SHARDS");
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut any)
        .await
        .expect("CLUSTER SLOTS");
    let from_slots = SlotMap::from_slots(&slots).expect("parse CLUSTER SLOTS");
    for map in [&from_shards, &from_slots] {
        assert!(map.is_complete());
        assert_eq!(map.masters().len(), 3);
        for key in keys.iter().step_by(10) {
            let (_, owner) = map.owner_of_key(key);
            let expected = blocking(|| cluster.node(cluster.owner_of_key(key)).port());
            assert_eq!(owner.map(|a| a.port), Some(expected));
        }
    }

    // A control connection: commands on streams of three masters, over one ClusterConnection.
    let streams = blocking(|| one_stream_per_master(&cluster));
    let client = redis::cluster::ClusterClientBuilder::new(cluster.seed_urls())
        .response_timeout(Duration::from_secs(5))
        .build()
        .expect("cluster client");
    let mut control: ClusterConnection = client.get_async_connection().await.expect("connect");
    for stream in &streams {
        let () = control
            .xgroup_create_mkstream(stream, "g", "$")
            .await
            .expect("XGROUP CREATE");
        for n in 0..3 {
            let _: String = control.xadd(stream, "*", &[("n", n)]).await.expect("XADD");
        }
        let read: StreamReadReply = control
            .xread_options(
                &[stream],
                &[">"],
                &StreamReadOptions::default().group("g", "c").count(10),
            )
            .await
            .expect("XREADGROUP");
        let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), 3);
        let acked: usize = control.xack(stream, "g", &ids[..1]).await.expect("XACK");
        assert_eq!(acked, 1);
    }
    // Keys in different slots cannot go in one script: the step path, with a hint.
    assert!(!Colocation::of(streams[0].as_bytes(), streams[1].as_bytes()).is_same_slot());

    // Failover of the first stream's shard: a blocked reader there hears `Demoted`, the old
    // master answers MOVED naming the new one, and the control connection follows by itself.
    let stream = &streams[0];
    let slot = key_slot(stream.as_bytes());
    let old = blocking(|| cluster.owner_of_key(stream));
    let reader = blocked_read(&cluster, old, stream).await;
    let new = blocking(|| cluster.failover(old));
    let err = reader
        .await
        .expect("reader task")
        .expect_err("the blocked read fails");
    assert_eq!(
        ClusterReply::classify(&err),
        Some(ClusterReply::Demoted),
        "{err}"
    );
    assert_eq!(Action::for_error(&err), Some(Action::FollowOwner));
    assert_eq!(
        as_the_consumer_sees_it(stream, err).cluster_action(),
        Some(Action::FollowOwner)
    );

    let mut stale = node_connection(&cluster, old).await;
    let err = stale.xlen::<_, usize>(stream).await.expect_err("MOVED");
    let reply = ClusterReply::classify(&err).expect("a topology reply");
    assert_eq!(
        reply.node().map(|a| a.port),
        Some(blocking(|| cluster.node(new).port()))
    );
    assert!(
        matches!(reply, ClusterReply::Moved { slot: s, .. } if s == slot),
        "{reply:?}"
    );
    let map = fetch_slot_map(&mut any).await.expect("slot map");
    assert_eq!(
        map.owner(slot),
        reply.node(),
        "the slot map agrees with MOVED"
    );
    let owner = resolve_owner(&mut control, stream.as_bytes())
        .await
        .expect("resolve through the cluster connection");
    assert_eq!(owner.as_ref(), reply.node(), "any node names the new owner");

    let _: String = control
        .xadd(stream, "*", &[("n", 3)])
        .await
        .expect("XADD after failover");
    let pending: StreamPendingReply = control.xpending(stream, "g").await.expect("XPENDING");
    assert_eq!(pending.count(), 2, "the PEL survived the failover");

    // Live migration of the second stream's slot: a blocked reader hears `KeyGone`, the source
    // answers ASK while the slot is open and MOVED after; the control connection follows both.
    let stream = &streams[1];
    let slot = key_slot(stream.as_bytes());
    let source = blocking(|| cluster.owner_of_key(stream));
    let target = blocking(|| {
        cluster
            .masters()
            .into_iter()
            .find(|&m| m != source)
            .expect("another master")
    });
    let reader = blocked_read(&cluster, source, stream).await;
    let mut migration = blocking(|| cluster.start_migration(slot, target));
    assert_eq!(blocking(|| migration.move_all_keys()), 1);
    let err = reader
        .await
        .expect("reader task")
        .expect_err("the blocked read fails");
    assert_eq!(
        ClusterReply::classify(&err),
        Some(ClusterReply::KeyGone),
        "{err}"
    );
    assert_eq!(Action::for_error(&err), Some(Action::FollowOwner));
    assert_eq!(
        as_the_consumer_sees_it(stream, err).cluster_action(),
        Some(Action::FollowOwner)
    );

    let mut at_source = node_connection(&cluster, source).await;
    let err = at_source.xlen::<_, usize>(stream).await.expect_err("ASK");
    let reply = ClusterReply::classify(&err).expect("a topology reply");
    assert_eq!(reply.action(), Action::AskOnce);
    assert!(
        matches!(reply, ClusterReply::Ask { slot: s, .. } if s == slot),
        "{reply:?}"
    );
    assert_eq!(
        reply.node().map(|a| a.port),
        Some(blocking(|| cluster.node(target).port()))
    );
    let len: usize = control.xlen(stream).await.expect("XLEN follows ASK");
    assert_eq!(len, 3);

    blocking(|| migration.finish());
    let err = at_source.xlen::<_, usize>(stream).await.expect_err("MOVED");
    assert!(matches!(
        ClusterReply::classify(&err),
        Some(ClusterReply::Moved { slot: s, .. }) if s == slot
    ));
    let pending: StreamPendingReply = control.xpending(stream, "g").await.expect("XPENDING");
    assert_eq!(
        pending.count(),
        2,
        "the group and its PEL moved with the key"
    );
    let ids: Vec<String> = match pending {
        StreamPendingReply::Data(data) => vec![data.start_id, data.end_id],
        _ => Vec::new(),
    };
    let acked: usize = control
        .xack(stream, "g", &ids)
        .await
        .expect("XACK on the new owner");
    assert_eq!(acked, 2);

    // A script on a stream and its default dead-letter stream is refused with CROSSSLOT, which
    // is fatal: a hash tag is the fix.
    let dlq = format!("{}:dlq", streams[2]);
    assert!(!Colocation::of(streams[2].as_bytes(), dlq.as_bytes()).is_same_slot());
    let err = redis::cmd("EVAL")
        .arg("return redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2])")
        .arg(2)
        .arg(&streams[2])
        .arg(&dlq)
        .query_async::<i64>(&mut control)
        .await
        .expect_err("CROSSSLOT");
    assert_eq!(Action::for_error(&err), Some(Action::Fatal), "{err}");
    let seen = as_the_consumer_sees_it(&streams[2], err);
    assert!(
        seen.is_fatal() && seen.cluster_action() == Some(Action::Fatal),
        "{seen}"
    );
}
