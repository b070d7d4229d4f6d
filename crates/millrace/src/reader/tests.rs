//! The reader against a real server: the replay over its own connection, then live reads.

use std::time::Duration;

use millrace_testkit::RedisServer;
use redis::AsyncCommands;

use super::{Reader, ReaderConfig};
use crate::connection::{Backend, ConnectionOptions};
use crate::entry::EntryId;
use crate::id::ConsumerId;
use crate::streams::ReadItem;

fn config() -> ReaderConfig {
    ReaderConfig {
        id: ConsumerId::new("s", "g", "c"),
        count: 10,
        block: Duration::from_millis(200),
        read_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(2),
    }
}

async fn xadd(con: &mut redis::aio::MultiplexedConnection, n: u32) -> Vec<EntryId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id: String = con.xadd("s", "*", &[("n", i)]).await.expect("XADD");
        ids.push(id.parse().expect("an entry id"));
    }
    ids
}

fn ids(items: &[ReadItem]) -> Vec<Option<EntryId>> {
    items.iter().map(ReadItem::id).collect()
}

#[tokio::test]
async fn a_replay_reads_the_own_pending_entries_then_live_reads_begin() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: () = con
        .xgroup_create_mkstream("s", "g", "0")
        .await
        .expect("XGROUP CREATE");
    let old = xadd(&mut con, 3).await;
    // Delivered to c before its restart: pending, and one of them deleted since.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "g", "c", "STREAMS", "s", ">"])
        .query_async(&mut con)
        .await
        .expect("XREADGROUP");
    let _: usize = con.xdel("s", &[old[1].to_string()]).await.expect("XDEL");
    let new = xadd(&mut con, 2).await;

    let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
    let node = backend.node_for("s").await.expect("node");
    let mut reader = Reader::connect(&backend, &node, config())
        .await
        .expect("connect");
    let first = reader.replay(&EntryId::MIN, 2).await.expect("replay");
    assert_eq!(ids(&first), vec![Some(old[0]), Some(old[1])]);
    assert!(matches!(first[1], ReadItem::Tombstone(id) if id == old[1]));
    let rest = reader.replay(&old[1], 2).await.expect("replay");
    assert_eq!(ids(&rest), vec![Some(old[2])]);
    assert!(reader.replay(&old[2], 2).await.expect("replay").is_empty());

    let live = reader.next().await.expect("live read");
    assert_eq!(ids(&live), vec![Some(new[0]), Some(new[1])]);
    let err = reader
        .replay(&EntryId::MIN, 2)
        .await
        .expect_err("live reads began");
    assert!(err.to_string().contains("live reads began"), "{err}");
    let mut control = backend.control();
    reader.stop(&mut control).await;
}

#[tokio::test]
async fn a_failed_replay_closes_only_the_readers_connection() {
    let server = RedisServer::start();
    let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
    let mut control = backend.control();
    let clients = |list: String| list.lines().count();
    let before: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut control)
        .await
        .expect("CLIENT LIST");
    let node = backend.node_for("s").await.expect("node");
    let mut reader = Reader::connect(&backend, &node, config())
        .await
        .expect("connect");
    // No group: the server refuses the read.
    let err = reader.replay(&EntryId::MIN, 10).await.expect_err("NOGROUP");
    assert!(err.to_string().contains("NOGROUP"), "{err}");
    assert!(reader.next().await.is_err(), "the reader is spent");
    millrace_testkit::eventually(
        Duration::from_secs(5),
        "the reader's connection closed",
        || {
            let mut control = control.clone();
            let want = clients(before.clone());
            async move {
                let now: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut control)
                    .await
                    .expect("CLIENT LIST");
                clients(now) == want
            }
        },
    )
    .await;
}
