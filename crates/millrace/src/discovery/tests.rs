//! Sweeps against real servers from the testkit: one server, and a cluster of three masters.

use std::collections::BTreeSet;

use millrace_testkit::{RedisCluster, RedisServer};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

use super::{PatternSweep, SweepResult};
use crate::connection::{Backend, ConnectionOptions};

const PATTERN: &str = "tenant:*:events";

fn names<I: IntoIterator<Item = String>>(list: I) -> BTreeSet<String> {
    list.into_iter().collect()
}

fn tenants(range: std::ops::Range<usize>) -> BTreeSet<String> {
    names(range.map(|i| format!("tenant:{i}:events")))
}

async fn add_streams(con: &mut impl AsyncCommands, streams: &BTreeSet<String>) {
    for stream in streams {
        let _: String = con.xadd(stream, "*", &[("f", "v")]).await.expect("XADD");
    }
}

/// A server, a connection to it and a backend on it.
async fn single_server() -> (RedisServer, MultiplexedConnection, Backend) {
    let server = RedisServer::start();
    let con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
    (server, con, backend)
}

/// Ticks until the sweep is complete; fails after `limit` ticks.
async fn sweep_to_end(
    sweep: &mut PatternSweep,
    backend: &Backend,
    limit: usize,
) -> (usize, SweepResult) {
    for ticks in 1..=limit {
        if let Some(result) = sweep.tick(backend).await.expect("a tick") {
            return (ticks, result);
        }
    }
    panic!(
        "no complete sweep of `{}` in {limit} ticks",
        sweep.pattern()
    );
}

#[tokio::test]
async fn a_sweep_finds_the_matching_streams_and_counts_other_types() {
    let (_server, mut con, backend) = single_server().await;
    let streams = tenants(0..30);
    add_streams(&mut con, &streams).await;
    add_streams(
        &mut con,
        &names(["orders".to_owned(), "tenant:1:audit".to_owned()]),
    )
    .await;
    let _: () = con.hset("tenant:h:events", "f", "v").await.expect("HSET");
    let _: () = con.set("tenant:s:events", "v").await.expect("SET");
    let _: () = con.set("unrelated", "v").await.expect("SET");

    let mut sweep = PatternSweep::new(PATTERN);
    let (ticks, result) = sweep_to_end(&mut sweep, &backend, 1).await;
    assert_eq!(ticks, 1, "a small keyspace is swept in one tick");
    assert_eq!(result.streams, streams);
    assert_eq!(
        result.other_type,
        names(["tenant:h:events".to_owned(), "tenant:s:events".to_owned()])
    );
    assert_eq!(
        result.type_calls, 32,
        "every match is new to the first sweep"
    );

    // The next sweep knows the streams: only the keys of other types are asked again.
    let (_, again) = sweep_to_end(&mut sweep, &backend, 1).await;
    assert_eq!(again.streams, streams);
    assert_eq!(again.other_type.len(), 2);
    assert_eq!(again.type_calls, 2);
}

#[tokio::test]
async fn a_bounded_sweep_spans_ticks_and_keeps_its_cursors() {
    let (_server, mut con, backend) = single_server().await;
    let streams = tenants(0..200);
    add_streams(&mut con, &streams).await;

    // `COUNT 10`, one call per tick: 200 keys cannot come back in one call.
    let mut sweep = PatternSweep::new(PATTERN).with_budget(10, 1);
    assert_eq!(sweep.tick(&backend).await.expect("a tick"), None);
    let (ticks, result) = sweep_to_end(&mut sweep, &backend, 1_000).await;
    assert_eq!(
        result.streams, streams,
        "every stream, from cursors kept between ticks"
    );
    assert_eq!(result.scan_calls, ticks as u64 + 1, "one SCAN per tick");
}

#[tokio::test]
async fn the_next_sweep_drops_a_deleted_stream_and_finds_new_ones() {
    let (_server, mut con, backend) = single_server().await;
    add_streams(&mut con, &tenants(0..3)).await;
    let _: () = con.hset("tenant:h:events", "f", "v").await.expect("HSET");
    let mut sweep = PatternSweep::new(PATTERN);
    let (_, first) = sweep_to_end(&mut sweep, &backend, 1).await;
    assert_eq!(first.streams, tenants(0..3));

    // One stream deleted, one added, and the hash replaced by a stream of the same name.
    let _: () = con.del("tenant:0:events").await.expect("DEL");
    add_streams(&mut con, &tenants(3..4)).await;
    let _: () = con.del("tenant:h:events").await.expect("DEL");
    add_streams(&mut con, &names(["tenant:h:events".to_owned()])).await;

    let (_, second) = sweep_to_end(&mut sweep, &backend, 1).await;
    let mut expected = tenants(1..4);
    expected.insert("tenant:h:events".to_owned());
    assert_eq!(second.streams, expected);
    assert!(second.other_type.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_on_a_cluster_covers_every_master() {
    let cluster = tokio::task::block_in_place(|| {
        RedisCluster::builder()
            .masters(3)
            .replicas_per_master(0)
            .start()
    });
    let client = cluster.client();
    let mut con = client.get_async_connection().await.expect("connect");
    let streams = tenants(0..60);
    add_streams(&mut con, &streams).await;
    let _: () = con.hset("tenant:h:events", "f", "v").await.expect("HSET");
    let owners: BTreeSet<usize> =
        tokio::task::block_in_place(|| streams.iter().map(|s| cluster.owner_of_key(s)).collect());
    assert_eq!(
        owners.len(),
        3,
        "the streams are spread over the three masters"
    );

    let backend =
        Backend::open_cluster(&cluster.seed_urls(), ConnectionOptions::default()).expect("backend");
    let mut sweep = PatternSweep::new(PATTERN);
    let (_, result) = sweep_to_end(&mut sweep, &backend, 1).await;
    assert_eq!(result.streams, streams);
    assert_eq!(result.other_type, names(["tenant:h:events".to_owned()]));
    assert_eq!(result.scan_calls, 3, "one page on each master");
}
