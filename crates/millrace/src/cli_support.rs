//! What the `millrace` command builds on, so that it has no copies of its own: the library's
//! control connection to one server or a cluster, its node scan, key colocation, URL
//! redaction and Sentinel master lookup. Not part of the API: no stability promise.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::cluster::{fetch_slot_map, Colocation, NodeAddress};
use crate::connection::{ClusterControl, Control};

/// The library's control connection: one server's `ConnectionManager`, or a cluster's
/// `ClusterConnection`, which routes each command by key and follows `MOVED` and `ASK`.
#[derive(Clone)]
pub struct Connection(Control);

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Connection {
    /// Connects to one server now, so that a failed first connection is the caller's to explain.
    /// A lost connection is made again on the next command.
    pub async fn server(
        client: redis::Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Connection> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_with_config(client, config).await?;
        Ok(Connection(Control::Single(manager)))
    }

    /// Connects to the cluster of `client` now.
    pub async fn cluster(client: ClusterClient) -> RedisResult<Connection> {
        Ok(Connection(Control::Cluster(
            ClusterControl::connect(client).await?,
        )))
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Control::Cluster(_))
    }

    /// The masters serving the cluster's slots (`host:port`, sorted), from `CLUSTER SHARDS` (or
    /// `CLUSTER SLOTS`); empty on one server.
    pub async fn masters(&mut self) -> RedisResult<Vec<String>> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let map = fetch_slot_map(&mut self.0).await?;
        let mut masters: Vec<String> = map.masters().iter().map(|m| m.to_string()).collect();
        masters.sort();
        masters.dedup();
        Ok(masters)
    }

    /// One `SCAN cursor [MATCH pattern] COUNT count [TYPE type]` page on the node `node`
    /// (`host:port`, as [`masters`](Self::masters) names it) of a cluster, or on the server: the
    /// next cursor (`0` after the last page) and the keys.
    pub async fn scan_page(
        &mut self,
        node: Option<&str>,
        cursor: u64,
        pattern: Option<&str>,
        count: usize,
        type_filter: Option<&str>,
    ) -> RedisResult<(u64, Vec<Vec<u8>>)> {
        let at = node.map(node_address).transpose()?;
        let at = at.as_ref().filter(|_| self.is_cluster());
        crate::discovery::scan::page(&mut self.0, at, cursor, pattern, count, type_filter).await
    }
}

impl Connection {
    /// Runs `cmd` on the node `node` (`host:port`, as [`masters`](Self::masters) names it) of a
    /// cluster; on one server, or without a node, as any command.
    pub async fn query_on<T: redis::FromRedisValue>(
        &mut self,
        node: Option<&str>,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match node.filter(|_| self.is_cluster()) {
            Some(node) => {
                let at = node_address(node)?;
                self.0.query_on(Some(&at), cmd.clone()).await
            }
            None => cmd.query_async(&mut self.0).await,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// `host:port` as a node address.
fn node_address(node: &str) -> RedisResult<NodeAddress> {
    NodeAddress::parse(node).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "unreadable node address",
            node.to_owned(),
        ))
    })
}

/// Whether keys `a` and `b` can be used together in one script or transaction on a cluster: they
/// hash to one slot (computed here, as the server does; no `CLUSTER KEYSLOT` round trip).
pub fn same_slot(a: &[u8], b: &[u8]) -> bool {
    Colocation::of(a, b).is_same_slot()
}

/// A Redis URL with its password (and a `pass=`/`password=` query value) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    crate::redact::redact_url(url)
}

/// The address of the master the Sentinels at `sentinels` (URLs) name `master_name` now
/// (`SENTINEL get-master-addr-by-name`, the first Sentinel that knows it), with the library's
/// errors: an empty name or list, a Sentinel URL that is not plain TCP, no Sentinel reachable,
/// none knowing the name.
pub async fn sentinel_master(
    master_name: &str,
    sentinels: &[String],
    timeout: Duration,
) -> crate::Result<std::net::SocketAddr> {
    let config = crate::sentinel::SentinelConfig {
        master_name: master_name.to_owned(),
        sentinels: sentinels.to_vec(),
        data_auth: String::new(),
    };
    crate::sentinel::master_addr(&config, timeout).await
}

/// Whether `host:port` answers a plain-text `PING` with a RESP reply within half a second: a TLS
/// server never does (it waits for a handshake, or drops the connection).
pub async fn answers_plain_resp(host: &str, port: u16) -> bool {
    crate::tls_advice::answers_plain_resp(host, port).await
}
