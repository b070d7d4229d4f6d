//! The contract both reader kinds keep through one implementation of each mechanism, checked for
//! a consumer's own [`Reader`] and a shared read's [`Subscription`] alike against a real
//! redis-server: a stop wakes a blocked read at once, and without the permission for
//! `CLIENT UNBLOCK` it stops asking and waits for BLOCK to run out; either way it returns with the
//! read's connection closed.

use std::time::Duration;

use millrace_testkit::{eventually, RedisServer};
use redis::aio::MultiplexedConnection;

use super::{Reader, ReaderConfig, SharedReaders, Subscription};
use crate::connection::{Backend, ConnectionOptions};
use crate::id::ConsumerId;

const WAIT: Duration = Duration::from_secs(10);

/// The two reader kinds, started alike.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Own,
    Shared,
}

enum Started {
    Own(Reader),
    Shared(Subscription),
}

impl Started {
    fn client_id(&self) -> Option<i64> {
        match self {
            Started::Own(r) => r.shared.wake.client_id(),
            Started::Shared(s) => s.client_id(),
        }
    }

    async fn stop(self, backend: &Backend) {
        let mut control = backend.control();
        match self {
            Started::Own(r) => drop(r.stop(&mut control).await),
            Started::Shared(s) => drop(s.stop(&mut control).await),
        }
    }
}

/// A server with group `g` on stream `s`; returns it with an admin connection.
async fn server() -> (RedisServer, MultiplexedConnection) {
    let server = RedisServer::start();
    let mut admin = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("s")
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .expect("XGROUP CREATE");
    (server, admin)
}

/// Starts a reader of `kind` for stream `s` with BLOCK `block`, and waits until its read blocks.
async fn start_blocked(
    kind: Kind,
    backend: &Backend,
    readers: &SharedReaders,
    admin: &MultiplexedConnection,
    block: Duration,
) -> Started {
    let node = backend.node_for("s").await.expect("node");
    let config = ReaderConfig {
        id: ConsumerId::new("s", "g", "c"),
        count: 10,
        block,
        read_timeout: block + Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
    };
    let started = match kind {
        Kind::Own => Started::Own(Reader::start(backend, &node, config).await.expect("reader")),
        Kind::Shared => Started::Shared(
            readers
                .subscribe(backend, &node, config)
                .await
                .expect("subscription"),
        ),
    };
    eventually(WAIT, "the read to block", || {
        blocked_clients(admin.clone(), 1)
    })
    .await;
    started
}

async fn info(mut admin: MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut admin)
        .await
        .expect("INFO")
}

/// Whether exactly `n` clients are blocked.
async fn blocked_clients(admin: MultiplexedConnection, n: u64) -> bool {
    info(admin, "clients")
        .await
        .lines()
        .find_map(|l| l.trim().strip_prefix("blocked_clients:"))
        .and_then(|v| v.parse::<u64>().ok())
        == Some(n)
}

/// Whether the server has a client connection with this id.
async fn connected(mut admin: MultiplexedConnection, id: i64) -> bool {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .any(|l| l.strip_prefix("id=").and_then(|r| r.split(' ').next()) == Some(&id.to_string()))
}

/// `CLIENT UNBLOCK` calls the server refused (ACL), from `INFO commandstats`.
async fn refused_unblocks(admin: MultiplexedConnection) -> u64 {
    info(admin, "commandstats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_client|unblock:"))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("rejected_calls="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_wakes_the_blocked_read_of_either_reader_kind() {
    for kind in [Kind::Own, Kind::Shared] {
        let (server, admin) = server().await;
        let backend = Backend::open(&server.url(), ConnectionOptions::default()).expect("backend");
        let readers = SharedReaders::default();
        // BLOCK far beyond the wait below: only a wake ends the read.
        let reader =
            start_blocked(kind, &backend, &readers, &admin, Duration::from_secs(600)).await;
        let id = reader.client_id().expect("CLIENT ID");
        tokio::time::timeout(WAIT, reader.stop(&backend))
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: the stop woke the blocked read"));
        assert!(
            !connected(admin.clone(), id).await,
            "{kind:?}: the read's connection is closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_unblock_a_stop_asks_once_and_waits_for_block() {
    for kind in [Kind::Own, Kind::Shared] {
        let (server, mut admin) = server().await;
        let _: () = redis::cmd("ACL")
            .arg(&[
                "SETUSER",
                "worker",
                "on",
                ">pw",
                "~*",
                "&*",
                "+@all",
                "-client|unblock",
            ])
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
        let url = format!("redis://worker:pw@127.0.0.1:{}", server.port());
        let backend = Backend::open(&url, ConnectionOptions::default()).expect("backend");
        let readers = SharedReaders::default();
        let reader = start_blocked(kind, &backend, &readers, &admin, Duration::from_secs(1)).await;
        let id = reader.client_id().expect("CLIENT ID is permitted");
        tokio::time::timeout(WAIT, reader.stop(&backend))
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: the stop returned once BLOCK ran out"));
        assert!(
            !connected(admin.clone(), id).await,
            "{kind:?}: the read's connection is closed"
        );
        // Refused once, then no more asking (not once every 20 ms until BLOCK ran out).
        assert_eq!(refused_unblocks(admin.clone()).await, 1, "{kind:?}");
    }
}
