//! [`Control`]: the shared control connection (one server's `ConnectionManager` or the cluster's
//! `ClusterConnection`), and commands routed to one node.

use std::fmt;
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::RedisFuture;

use crate::cluster::NodeAddress;

/// The control connection a consumer sends its commands through: one server's
/// `ConnectionManager`, or the cluster's `ClusterConnection`, which routes each command to the
/// master of its key and follows `MOVED` and `ASK` itself. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Control {
    /// One server.
    Single(ConnectionManager),
    /// A cluster, connected on first use.
    Cluster(ClusterControl),
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Control::Single(_) => "Control::Single",
            Control::Cluster(_) => "Control::Cluster",
        })
    }
}

/// The cluster's control connection, made on first use (so `start` need not wait for it, and a
/// cluster that is down at start is retried like a server that is down).
#[derive(Clone)]
pub(crate) struct ClusterControl(Arc<ClusterShared>);

struct ClusterShared {
    client: ClusterClient,
    /// Made on first use; taken out by [`ClusterControl::close`].
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl ClusterControl {
    /// The control connection of the cluster `client`, connected on first use.
    pub(crate) fn new(client: ClusterClient) -> ClusterControl {
        ClusterControl(Arc::new(ClusterShared {
            client,
            conn: tokio::sync::Mutex::new(None),
        }))
    }

    /// Connects now (the CLI reports a failed first connection at once).
    pub(crate) async fn connect(client: ClusterClient) -> redis::RedisResult<ClusterControl> {
        let control = ClusterControl::new(client);
        control.connection().await?;
        Ok(control)
    }

    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        let mut slot = self.0.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.0.client.get_async_connection().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Lets go of the cluster connection: once the last command in flight has its reply, its
    /// connections to the masters close.
    pub(super) async fn close(&self) {
        self.0.conn.lock().await.take();
    }
}

impl Control {
    /// Wakes the blocked read of the connection `client_id` on `node` (`CLIENT UNBLOCK`): on a
    /// cluster the command is routed to that node, since client ids are per node.
    pub(crate) async fn unblock(
        &mut self,
        node: Option<&NodeAddress>,
        client_id: i64,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(client_id);
        self.query_on(node, cmd).await
    }

    /// Whether a failed [`Control::unblock`] means it can never work on this connection: the server
    /// refused the command (`NOPERM`, or a server without it). Anything else (a lost or reconnecting
    /// connection, a cluster connection that has no connection to the node right now, a timeout)
    /// may pass: the caller keeps the client id and tries again at the next wake.
    pub(crate) fn unblock_refused(e: &redis::RedisError) -> bool {
        if e.code() == Some("NOPERM") {
            return true;
        }
        let text = e.to_string().to_ascii_lowercase();
        e.code() == Some("ERR")
            && (text.contains("unknown command") || text.contains("unknown subcommand"))
    }

    /// Runs `cmd` on the server, or on a cluster on the node `node` (for commands that are per
    /// node: `CLIENT UNBLOCK`, `SCAN`). On a cluster without a node it fails: such a command has
    /// no key to route it by.
    pub(crate) async fn query_on<T: redis::FromRedisValue>(
        &mut self,
        node: Option<&NodeAddress>,
        cmd: redis::Cmd,
    ) -> redis::RedisResult<T> {
        match (self, node) {
            (Control::Single(c), _) => cmd.query_async(c).await,
            (Control::Cluster(c), Some(node)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                });
                let value = c.connection().await?.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
            (Control::Cluster(_), None) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no cluster node named to send the command to",
            ))),
        }
    }
}

/// The control connection with every command sent to the node it takes for one slot (the slot's
/// master, as far as it knows), whatever the command: see [`Control::at_slot`].
pub(crate) struct AtSlot {
    control: Control,
    slot: u16,
}

impl Control {
    /// This connection, sending each command to the master of `slot` as the cluster connection
    /// knows it (on one server, to the server): for `CLUSTER SHARDS`, which redis-rs would send to
    /// any node.
    pub(crate) fn at_slot(&self, slot: u16) -> AtSlot {
        AtSlot {
            control: self.clone(),
            slot,
        }
    }
}

impl ConnectionLike for AtSlot {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        let slot = self.slot;
        match &mut self.control {
            Control::Single(c) => c.req_packed_command(cmd),
            Control::Cluster(c) => Box::pin(async move {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::new(slot, SlotAddr::Master),
                ));
                c.connection()
                    .await?
                    .route_command(cmd.clone(), routing)
                    .await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        self.control.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.control.get_db()
    }
}

impl ConnectionLike for Control {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Control::Single(c) => c.req_packed_command(cmd),
            Control::Cluster(c) => Box::pin(async move {
                let mut conn = c.connection().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Control::Single(c) => c.req_packed_commands(cmd, offset, count),
            Control::Cluster(c) => Box::pin(async move {
                let mut conn = c.connection().await?;
                conn.req_packed_commands(cmd, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Control::Single(c) => c.get_db(),
            Control::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Control;

    /// The error redis-rs makes of a server's error reply line (`-CODE detail`).
    fn reply(line: &str) -> redis::RedisError {
        redis::parse_redis_value(format!("{line}\r\n").as_bytes())
            .expect("a reply")
            .extract_error()
            .expect_err("an error reply")
    }

    #[test]
    fn only_a_refusal_of_client_unblock_is_for_good() {
        for refused in [
            reply("-NOPERM User u has no permissions to run the 'client|unblock' command"),
            reply("-ERR unknown subcommand 'UNBLOCK'. Try CLIENT HELP."),
            reply("-ERR unknown command 'CLIENT', with args beginning with: 'UNBLOCK' '12' "),
        ] {
            assert!(Control::unblock_refused(&refused), "{refused}");
        }
        // What the cluster connection says while its connection to the node is being repaired,
        // a lost connection, a timeout, a cluster that is down for a moment: tried again.
        for passing in [
            redis::RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "Requested connection not found",
                "127.0.0.1:7001".to_owned(),
            )),
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into(),
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out").into(),
            reply("-CLUSTERDOWN The cluster is down"),
            reply("-TRYAGAIN Multiple keys request during rehashing of slot"),
        ] {
            assert!(!Control::unblock_refused(&passing), "{passing}");
        }
    }
}
