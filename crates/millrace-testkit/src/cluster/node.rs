//! One node of a [`RedisCluster`](crate::RedisCluster).

use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::cluster::view::{parse_nodes, NodeLine};
use crate::server::PortReservation;
use crate::tls;
use crate::RedisServer;

/// How long an admin command of the testkit waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an admin command of the testkit waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One `redis-server --cluster-enabled yes` process of a
/// [`RedisCluster`](crate::RedisCluster), with its client port and its
/// cluster-bus port (`--cluster-port`, both chosen free on `127.0.0.1`).
///
/// Its role is not fixed: a failover turns a replica into a master and back,
/// so ask the cluster ([`RedisCluster::owner_of_key`](crate::RedisCluster::owner_of_key),
/// [`RedisCluster::masters`](crate::RedisCluster::masters)) rather than
/// remembering which node was which.
pub struct ClusterNode {
    pub(crate) index: usize,
    pub(crate) id: String,
    pub(crate) server: RedisServer,
    pub(crate) bus: PortReservation,
    /// The kit's admin connection, see [`query`](Self::query).
    pub(crate) admin: Mutex<Option<redis::Connection>>,
}

impl ClusterNode {
    /// The node's position in [`RedisCluster::nodes`](crate::RedisCluster::nodes);
    /// every helper of the cluster names nodes by it.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The cluster's id of the node (40 hex characters, `CLUSTER MYID`),
    /// kept across restarts.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client port; the same across restarts.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The cluster-bus port the nodes talk to each other on.
    pub fn bus_port(&self) -> u16 {
        self.bus.port
    }

    /// `127.0.0.1:PORT`, as `MOVED` and `ASK` replies name the node.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// `redis://127.0.0.1:PORT` (with the password if the cluster has one).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A single-node `redis::Client` for this node: commands on keys it does
    /// not serve get `MOVED`, as a plain client would. On a TLS cluster it
    /// trusts the cluster's CA.
    ///
    /// # Panics
    ///
    /// Panics if the client cannot be built.
    pub fn client(&self) -> redis::Client {
        match self.server.ca_cert_path() {
            None => self.server.client(),
            Some(ca) => match tls::client(&self.url(), &ca) {
                Ok(client) => client,
                Err(e) => panic!("millrace-testkit: {e}"),
            },
        }
    }

    /// The process id, or `None` while the node is not running.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// The node's data directory (its log and `nodes.conf`).
    pub fn dir(&self) -> &Path {
        self.server.dir()
    }

    /// The node's log, across restarts.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// The underlying server, for what a cluster has no helper for, such as
    /// [`freeze`](RedisServer::freeze) and [`thaw`](RedisServer::thaw).
    pub fn server(&self) -> &RedisServer {
        &self.server
    }

    /// Runs one command on this node with short timeouts, over the kit's
    /// own connection to it (kept between calls: waiting for a cluster to
    /// settle asks every node several things many times, and a TLS handshake
    /// per question is slow). A connection that failed other than with a
    /// server's error reply is dropped, and the command is tried once more on
    /// a new one, so a restarted node is reached again.
    pub(crate) fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut cached = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut con) = cached.take() {
            match cmd.query(&mut con) {
                Ok(value) => {
                    *cached = Some(con);
                    return Ok(value);
                }
                // The server answered: the connection is in step.
                Err(e) if e.code().is_some() => {
                    *cached = Some(con);
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        let mut con = self.client().get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(REPLY_TIMEOUT))?;
        con.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let result = cmd.query(&mut con);
        if result.as_ref().is_ok() || result.as_ref().is_err_and(|e| e.code().is_some()) {
            *cached = Some(con);
        }
        result
    }

    /// `CLUSTER NODES` as this node sees it.
    pub(crate) fn view(&self) -> Result<Vec<NodeLine>, String> {
        let text: String = self
            .query(redis::cmd("CLUSTER").arg("NODES"))
            .map_err(|e| {
                format!(
                    "node {} ({}): CLUSTER NODES: {e}",
                    self.index,
                    self.address()
                )
            })?;
        Ok(parse_nodes(&text))
    }

    /// This node's own line of [`view`](Self::view).
    pub(crate) fn own_line(&self) -> Result<NodeLine, String> {
        self.view()?
            .into_iter()
            .find(|l| l.myself)
            .ok_or_else(|| format!("node {}: no `myself` line in CLUSTER NODES", self.index))
    }

    /// `cluster_state` of `CLUSTER INFO`: `ok` or `fail`.
    pub(crate) fn cluster_state(&self) -> Result<String, String> {
        let info: String = self.query(redis::cmd("CLUSTER").arg("INFO")).map_err(|e| {
            format!(
                "node {} ({}): CLUSTER INFO: {e}",
                self.index,
                self.address()
            )
        })?;
        field(&info, "cluster_state")
            .ok_or_else(|| format!("node {}: no cluster_state in CLUSTER INFO", self.index))
    }

    /// One field of `INFO <section>`, e.g. `master_link_status`.
    pub(crate) fn info_field(&self, section: &str, name: &str) -> Result<String, String> {
        let info: String = self.query(redis::cmd("INFO").arg(section)).map_err(|e| {
            format!(
                "node {} ({}): INFO {section}: {e}",
                self.index,
                self.address()
            )
        })?;
        field(&info, name)
            .ok_or_else(|| format!("node {}: no {name} in INFO {section}", self.index))
    }

    /// The last `lines` lines of the log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The value of `name:value` in an `INFO`-style text.
fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
        .map(str::to_owned)
}

impl fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterNode")
            .field("index", &self.index)
            .field("id", &self.id)
            .field("address", &self.address())
            .field("bus_port", &self.bus_port())
            .field("pid", &self.pid())
            .finish()
    }
}
