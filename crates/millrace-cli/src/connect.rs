//! Connecting to Redis through the library's connection (`millrace::__cli`), with the URL redacted
//! in every message: where the commands go ([`Endpoint`]) and the connection they run on
//! ([`Redis`]). Opening it is in `open`, what a key holds in `keys`.

use std::path::Path;
use std::time::Duration;

use millrace::__cli::redact_url as redact;
pub(crate) use millrace::__cli::Connection;
use redis::{Cmd, ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisError};

use crate::error::{self, CliError, Result};
use crate::key::Key;

mod keys;
mod open;

pub(crate) use keys::{is_missing, no_such_stream, wrong_type, KeyState};
use open::{
    cluster_connection, connect_error, explain_connect_error, not_tls, open_client,
    plain_text_behind_tls,
};

/// How long to wait for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a reply to a non-blocking command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the commands go: one server, the given nodes of a Redis Cluster, or the master behind
/// Sentinels. `Debug` shows no URL or password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// One server (`--redis`).
    Server(String),
    /// Seed nodes of a cluster (`--redis-cluster`); any one that answers is enough.
    Cluster(Vec<String>),
    /// The master the Sentinels name `master` (`--redis-sentinel`), with the data nodes'
    /// `user:password` (URL userinfo), if given.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        data_auth: Option<String>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Server(_) => f.write_str("Endpoint::Server"),
            Endpoint::Cluster(seeds) => write!(f, "Endpoint::Cluster({} seeds)", seeds.len()),
            Endpoint::Sentinel {
                master, sentinels, ..
            } => write!(
                f,
                "Endpoint::Sentinel({master}, {} sentinels)",
                sentinels.len()
            ),
        }
    }
}

/// What opens connections: a server's client, or a cluster's seeds and CA certificate (a blocking
/// read gets a cluster connection of its own, with a longer response timeout).
#[derive(Clone)]
enum Opener {
    Server(redis::Client),
    Cluster {
        seeds: Vec<redis::ConnectionInfo>,
        ca_cert: Option<Vec<u8>>,
    },
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Opener::Server(_) => "Opener::Server",
            Opener::Cluster { .. } => "Opener::Cluster",
        })
    }
}

/// A connection to Redis and the redacted URL it came from.
#[derive(Debug, Clone)]
pub(crate) struct Redis {
    opener: Opener,
    conn: Connection,
    /// The URL with its password replaced (on a cluster, `cluster` and the given nodes), for messages.
    pub(crate) target: String,
}

impl Redis {
    /// Connects (and authenticates) to one server or a cluster; with `rediss://`, `ca_cert` names
    /// an extra CA certificate (PEM) to trust.
    pub(crate) async fn open(endpoint: &Endpoint, ca_cert: Option<&Path>) -> Result<Redis> {
        match endpoint {
            Endpoint::Server(url) => Redis::connect(url, ca_cert).await,
            Endpoint::Cluster(urls) => Redis::connect_cluster(urls, ca_cert).await,
            Endpoint::Sentinel {
                master,
                sentinels,
                data_auth,
            } => {
                let addr = millrace::__cli::sentinel_master(master, sentinels, CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| CliError::runtime(format!("--redis-sentinel: {e}")))?;
                let auth = data_auth
                    .as_ref()
                    .map(|a| format!("{a}@"))
                    .unwrap_or_default();
                // A first command here, so that a refused password is told now, with advice
                // naming the option the master's credentials came from.
                let sentinel_advice = |mut e: CliError| {
                    e.message = e.message.replace(
                        "--redis (or REDIS_URL)",
                        "--redis-sentinel (or REDIS_SENTINEL)",
                    );
                    e
                };
                let mut redis = Redis::connect(&format!("redis://{auth}{addr}"), None)
                    .await
                    .map_err(sentinel_advice)?;
                redis.target = format!("{} (master `{master}` by Sentinel)", redis.target);
                let pinged: Result<String, RedisError> = redis.raw(&redis::cmd("PING")).await;
                pinged.map_err(|e| sentinel_advice(error::from_redis(&e, &redis.target)))?;
                Ok(redis)
            }
        }
    }

    /// Connects (and authenticates) to `url`; with `rediss://`, `ca_cert` names an extra CA
    /// certificate (PEM) to trust.
    pub(crate) async fn connect(url: &str, ca_cert: Option<&Path>) -> Result<Redis> {
        let target = redact(url);
        let client = open_client(url, ca_cert, &target)?;
        let connect = Connection::server(client.clone(), CONNECT_TIMEOUT, RESPONSE_TIMEOUT);
        let conn = tokio::select! {
            connected = connect => match connected {
                Ok(conn) => conn,
                Err(e) => return Err(explain_connect_error(&client, &e, &target).await),
            },
            () = plain_text_behind_tls(&client) => return Err(not_tls(&target)),
        };
        Ok(Redis {
            opener: Opener::Server(client),
            conn,
            target,
        })
    }

    /// Connects to the cluster whose seed nodes are `urls` (every seed with the same credentials).
    pub(crate) async fn connect_cluster(urls: &[String], ca_cert: Option<&Path>) -> Result<Redis> {
        let target = format!(
            "cluster {}",
            urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
        );
        if urls.is_empty() {
            return Err(CliError::usage(
                "--redis-cluster names no node; give at least one, e.g. redis://127.0.0.1:7000",
            ));
        }
        let mut seeds = Vec::with_capacity(urls.len());
        for url in urls {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| error::from_redis(&e, &redact(url)))?;
            if matches!(info.addr(), ConnectionAddr::Unix(_)) {
                return Err(CliError::usage(format!(
                    "{} is a unix socket: cluster nodes are reached over TCP",
                    redact(url)
                )));
            }
            if info.redis_settings().db() != 0 {
                return Err(CliError::usage(format!(
                    "{} names a database: a cluster has only database 0",
                    redact(url)
                )));
            }
            seeds.push(info);
        }
        let ca_cert = match ca_cert {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot read the CA certificate {}: {e}",
                    path.display()
                ))
            })?),
        };
        let opener = Opener::Cluster { seeds, ca_cert };
        let conn = cluster_connection(&opener, RESPONSE_TIMEOUT, &target).await?;
        Ok(Redis {
            opener,
            conn,
            target,
        })
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// The masters of the cluster (`host:port`, as the cluster names them, sorted); empty on one
    /// server.
    pub(crate) async fn masters(&mut self) -> Result<Vec<String>> {
        let target = &self.target;
        self.conn
            .masters()
            .await
            .map_err(|e| error::from_redis(&e, target))
    }

    /// One `SCAN` page on `node` (`host:port`, as [`masters`](Self::masters) names it; on one server,
    /// the server): the next cursor (`0` after
    /// the last page) and the keys matching `pattern` (and of type `type_filter`, if given).
    pub(crate) async fn scan_page(
        &mut self,
        node: Option<&str>,
        cursor: u64,
        pattern: Option<&str>,
        count: usize,
        type_filter: Option<&str>,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let target = &self.target;
        self.conn
            .scan_page(node, cursor, pattern, count, type_filter)
            .await
            .map_err(|e| match node {
                Some(node) => error::from_redis(&e, &format!("{node} of {target}")),
                None => error::from_redis(&e, target),
            })
    }

    /// Whether `a` and `b` can be used together in one script: always on one server, on a cluster
    /// when they hash to one slot (computed here, as the server does).
    pub(crate) async fn same_slot(&mut self, a: &Key, b: &Key) -> Result<bool> {
        Ok(!self.is_cluster() || millrace::__cli::same_slot(a.as_bytes(), b.as_bytes()))
    }

    /// A second connection for blocking reads: its response timeout is `block` plus a margin.
    pub(crate) async fn blocking_connection(&self, block: Duration) -> Result<Connection> {
        match &self.opener {
            Opener::Server(client) => {
                Connection::server(client.clone(), CONNECT_TIMEOUT, block + RESPONSE_TIMEOUT)
                    .await
                    .map_err(|e| connect_error(&e, &self.target))
            }
            Opener::Cluster { .. } => {
                cluster_connection(&self.opener, block + RESPONSE_TIMEOUT, &self.target).await
            }
        }
    }

    /// The shared connection, for helpers that take a `ConnectionLike`.
    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Runs a command; errors stay Redis errors so the caller can explain them.
    pub(crate) async fn raw<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        cmd.query_async(&mut self.conn).await
    }

    /// Runs a command; errors are translated generically.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T> {
        cmd.query_async(&mut self.conn)
            .await
            .map_err(|e| self.error(&e))
    }

    /// Runs a command on one node of a cluster (`host:port`, as [`masters`](Self::masters) names
    /// it), or as [`query`](Self::query) does on one server or without a node.
    pub(crate) async fn query_on<T: FromRedisValue>(
        &mut self,
        node: Option<&str>,
        cmd: &Cmd,
    ) -> Result<T> {
        let target = &self.target;
        self.conn.query_on(node, cmd).await.map_err(|e| match node {
            Some(node) => error::from_redis(&e, &format!("{node} of {target}")),
            None => error::from_redis(&e, target),
        })
    }

    /// Translates a Redis error generically.
    pub(crate) fn error(&self, e: &RedisError) -> CliError {
        error::from_redis(e, &self.target)
    }
}
