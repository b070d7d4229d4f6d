//! Connecting to Redis through the library's connection (`millrace::__cli`), with the URL redacted
//! in every message, and checking what a key holds.

use std::path::Path;
use std::time::Duration;

use millrace::__cli::answers_plain_resp;
use millrace::__cli::redact_url as redact;
pub(crate) use millrace::__cli::Connection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{Cmd, ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisError, Value};

use crate::error::{self, CliError, Result};
use crate::key::Key;

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

    /// `TYPE key`: `none`, `string`, `stream`, ...
    pub(crate) async fn key_type(&mut self, key: &[u8]) -> Result<String> {
        let v: Value = self.query(redis::cmd("TYPE").arg(key)).await?;
        Ok(crate::value::text(&v).unwrap_or_default())
    }

    /// What `key` is: a stream, nothing, or something else.
    pub(crate) async fn stream_state(&mut self, key: &Key) -> Result<KeyState> {
        Ok(match self.key_type(key.as_bytes()).await?.as_str() {
            "stream" => KeyState::Stream,
            "none" => KeyState::Missing,
            other => KeyState::Other(other.to_owned()),
        })
    }

    /// Fails with a clear message unless `key` holds a stream.
    pub(crate) async fn require_stream(&mut self, key: &Key) -> Result<()> {
        match self.stream_state(key).await? {
            KeyState::Stream => Ok(()),
            KeyState::Missing => Err(no_such_stream(key)),
            KeyState::Other(t) => Err(wrong_type(key, &t)),
        }
    }

    /// Explains a `NOGROUP` (or `ERR no such key`) reply for `stream`/`group`.
    pub(crate) async fn explain_missing(&mut self, stream: &Key, group: &Key) -> CliError {
        match self.stream_state(stream).await {
            Ok(KeyState::Missing) => no_such_stream(stream),
            Ok(KeyState::Other(t)) => wrong_type(stream, &t),
            Ok(KeyState::Stream) => no_such_group(stream, group),
            Err(e) => e,
        }
    }

    /// Runs a command on `stream`/`group`, explaining NOGROUP, WRONGTYPE and missing keys.
    pub(crate) async fn group_query<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        stream: &Key,
        group: &Key,
    ) -> Result<T> {
        match self.raw(cmd).await {
            Ok(v) => Ok(v),
            Err(e) if is_missing(&e) => Err(self.explain_missing(stream, group).await),
            Err(e) => Err(self.error(&e)),
        }
    }
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// A stream.
    Stream,
    /// Nothing.
    Missing,
    /// Another type, named as `TYPE` does.
    Other(String),
}

/// True for the replies Redis gives for a missing key, a missing group, or a wrong key type.
pub(crate) fn is_missing(e: &RedisError) -> bool {
    match error::code(e) {
        Some("NOGROUP" | "WRONGTYPE") => true,
        Some("ERR") => e
            .detail()
            .is_some_and(|d| d.to_ascii_lowercase().contains("no such key")),
        _ => false,
    }
}

/// "no such stream" with a hint.
pub(crate) fn no_such_stream(key: &Key) -> CliError {
    CliError::runtime(format!(
        "no such stream `{key}`; list the streams with `millrace streams`"
    ))
}

/// "key is a string, not a stream".
pub(crate) fn wrong_type(key: &Key, actual: &str) -> CliError {
    CliError::runtime(format!("key `{key}` is a {actual}, not a stream"))
}

/// "group does not exist" with a hint.
pub(crate) fn no_such_group(stream: &Key, group: &Key) -> CliError {
    CliError::runtime(format!(
        "group `{group}` does not exist on stream `{stream}`; list its groups with `millrace groups {stream}`"
    ))
}

/// Connects to a cluster through `opener`'s seeds, waiting up to `response` for each reply.
async fn cluster_connection(
    opener: &Opener,
    response: Duration,
    target: &str,
) -> Result<Connection> {
    let Opener::Cluster { seeds, ca_cert } = opener else {
        return Err(CliError::runtime("not a cluster"));
    };
    let client = cluster_client(seeds, ca_cert.as_deref(), response, target)?;
    Connection::cluster(client)
        .await
        .map_err(|e| cluster_connect_error(&e, target))
}

/// Explains a failed first connection to a cluster.
fn cluster_connect_error(e: &RedisError, target: &str) -> CliError {
    if e.to_string().contains("cluster support disabled") {
        return CliError::runtime(format!(
            "{target} is not a Redis Cluster: the server answered that cluster support is \
             disabled; for one server use --redis (or REDIS_URL)"
        ));
    }
    if e.to_string().contains("certificate") {
        return CliError::runtime(format!(
            "TLS to {target} failed: {e}; if the nodes' certificates are signed by a private CA, \
             give that CA with --tls-ca-cert FILE (or MILLRACE_TLS_CA_CERT)"
        ));
    }
    if e.is_io_error() && !e.is_timeout() {
        return CliError::runtime(format!(
            "cannot connect to any node of {target}: {e}; are the nodes running? Point \
             --redis-cluster (or REDIS_CLUSTER_URLS) at them"
        ));
    }
    error::from_redis(e, target)
}

/// A cluster client for `seeds`, trusting `ca_cert` too when given.
fn cluster_client(
    seeds: &[redis::ConnectionInfo],
    ca_cert: Option<&[u8]>,
    response: Duration,
    target: &str,
) -> Result<ClusterClient> {
    let tls = seeds
        .iter()
        .any(|s| matches!(s.addr(), ConnectionAddr::TcpTls { .. }));
    let builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response);
    #[cfg(feature = "tls")]
    let builder = {
        if tls {
            millrace::install_tls_provider();
        }
        match ca_cert {
            Some(pem) => builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            }),
            None => builder,
        }
    };
    #[cfg(not(feature = "tls"))]
    if tls || ca_cert.is_some() {
        return Err(CliError::usage(format!(
            "{target} needs TLS, and this millrace was built without it; build it with the \
             default features (`cargo install millrace-cli`)"
        )));
    }
    builder.build().map_err(|e| error::from_redis(&e, target))
}

/// A client for `url`, trusting `ca_cert` too when given.
#[cfg(feature = "tls")]
fn open_client(url: &str, ca_cert: Option<&Path>, target: &str) -> Result<redis::Client> {
    millrace::install_tls_provider();
    let client = match ca_cert {
        None => redis::Client::open(url),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot read the CA certificate {}: {e}",
                    path.display()
                ))
            })?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
    };
    client.map_err(|e| error::from_redis(&e, target))
}

/// A client for `url`; this build has no TLS, so `rediss://` and a CA certificate are refused.
#[cfg(not(feature = "tls"))]
fn open_client(url: &str, ca_cert: Option<&Path>, target: &str) -> Result<redis::Client> {
    if ca_cert.is_some() || url.starts_with("rediss:") {
        return Err(CliError::usage(format!(
            "{target} needs TLS, and this millrace was built without it; build it with the \
             default features (`cargo install millrace-cli`)"
        )));
    }
    redis::Client::open(url).map_err(|e| error::from_redis(&e, target))
}

/// Explains a failed first connection. A TLS handshake with a server that speaks plain RESP never
/// completes (the server waits for the end of a command line), so a failed `rediss://` connection
/// is followed by a plain `PING`: when that is answered, the server does not speak TLS there.
async fn explain_connect_error(client: &redis::Client, e: &RedisError, target: &str) -> CliError {
    if e.is_connection_refusal() {
        return connect_error(e, target);
    }
    match client.get_connection_info().addr() {
        ConnectionAddr::TcpTls { host, port, .. } => {
            if answers_plain_resp(host, *port).await {
                return not_tls(target);
            }
            if e.to_string().contains("certificate") {
                return CliError::runtime(format!(
                    "TLS to {target} failed: {e}; if the server's certificate is signed by a \
                     private CA, give that CA with --tls-ca-cert FILE (or MILLRACE_TLS_CA_CERT)"
                ));
            }
        }
        ConnectionAddr::Tcp(..) if e.is_io_error() && !e.is_timeout() => {
            return CliError::runtime(format!(
                "cannot connect to Redis at {target}: {e}; is the server running, and does that \
                 port speak plain RESP? For a TLS port use rediss://"
            ));
        }
        _ => {}
    }
    connect_error(e, target)
}

/// How long a TLS handshake may take before the port is asked whether it speaks plain RESP.
const TLS_PROBE_AFTER: Duration = Duration::from_secs(1);

/// Resolves when a `rediss://` server has not finished the TLS handshake within
/// [`TLS_PROBE_AFTER`] and answers a plain-text `PING`; never otherwise. Such a server waits for
/// the end of a command line that the handshake never sends, so waiting for the connect timeout
/// would only delay the error.
async fn plain_text_behind_tls(client: &redis::Client) {
    if let ConnectionAddr::TcpTls { host, port, .. } = client.get_connection_info().addr() {
        tokio::time::sleep(TLS_PROBE_AFTER).await;
        if answers_plain_resp(host, *port).await {
            return;
        }
    }
    std::future::pending().await
}

/// "does not speak TLS".
fn not_tls(target: &str) -> CliError {
    CliError::runtime(format!(
        "the server at {target} does not speak TLS: it answered a plain-text PING on that port; \
         use redis:// instead of rediss://, or the server's TLS port"
    ))
}

fn connect_error(e: &RedisError, target: &str) -> CliError {
    if e.is_io_error() && !e.is_timeout() {
        return CliError::runtime(format!(
            "cannot connect to Redis at {target}: {e}; is the server running? Point --redis (or \
             REDIS_URL) at it, or --redis-cluster (or REDIS_CLUSTER_URLS) at a cluster's nodes"
        ));
    }
    error::from_redis(e, target)
}
