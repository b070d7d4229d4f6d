//! Connections: one shared control connection (acks, claims, admin, replays) and one dedicated
//! blocking read connection per consumer (see `reader`), whose response timeout exceeds its BLOCK.
//! Both speak TLS for a `rediss://` server: the control connection through redis-rs, the read
//! connections through `crate::tls`.
//!
//! Everything that talks to Redis goes through [`Backend`]. On a Redis Cluster the control
//! connection is redis-rs's `ClusterConnection` (one connection per master, `MOVED` and `ASK`
//! followed by redis-rs), behind the same [`Control`] handle, and a consumer's own connections go
//! to the master that serves its stream ([`Backend::node_for`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisFuture,
};

use crate::cluster::NodeAddress;
use crate::error::{Error, Result};
use crate::reader::SharedReaders;

/// Connection settings shared by every consumer of a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionOptions {
    /// Timeout of one connection attempt. Default 2s.
    pub connect_timeout: Duration,
    /// Response timeout of acks, claims and admin commands. Default 5s.
    pub command_timeout: Duration,
    /// What [`start`](crate::SupervisorBuilder::start) does when Redis cannot be reached or refuses
    /// the credentials. `false` (the default): `start` connects once, within `connect_timeout` plus
    /// `command_timeout`, and fails with an error that names the server and what went wrong.
    /// `true`: `start` returns at once and the consumers keep retrying until Redis is there (for
    /// orchestrated deployments where Redis may start after the application); a refused password
    /// then surfaces through [`Supervisor::wait`](crate::Supervisor::wait).
    pub wait_for_redis: bool,
    /// Root and client certificates for a `rediss://` server.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Certificates>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            wait_for_redis: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ConnectionOptions {
    /// Root certificates to trust instead of the Mozilla roots, and a client certificate for
    /// mutual TLS, for a `rediss://` server (the `tls` feature). With a URL
    /// ([`SupervisorBuilder::redis`](crate::SupervisorBuilder::redis)) they apply to every
    /// connection; a `redis::Client` built with `Client::build_with_tls` must be given the same
    /// ones, since millrace cannot read them back from it.
    ///
    /// ```no_run
    /// # async fn run() -> millrace::Result<()> {
    /// let certificates = redis::TlsCertificates {
    ///     client_tls: None,
    ///     root_cert: Some(std::fs::read("ca.crt").expect("the CA certificate")),
    /// };
    /// let app = millrace::Supervisor::builder()
    ///     .redis("rediss://redis.internal:6380")
    ///     .connection_options(millrace::ConnectionOptions::default().tls_certificates(certificates))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_certificates(mut self, certificates: redis::TlsCertificates) -> Self {
        self.tls = Some(crate::tls::Certificates(certificates));
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.connect_timeout < Duration::from_millis(10) {
            return Err(Error::config(
                None,
                "connect_timeout",
                "must be at least 10ms",
            ));
        }
        if self.command_timeout < Duration::from_millis(10) {
            return Err(Error::config(
                None,
                "command_timeout",
                "must be at least 10ms",
            ));
        }
        Ok(())
    }
}

/// Where consumers connect: one server, or a Redis Cluster.
enum Target {
    /// One server: every connection goes to the client's address.
    Single {
        client: Box<Client>,
        /// How readers connect to a `rediss://` server.
        #[cfg(feature = "tls")]
        tls: Option<Arc<crate::tls::Tls>>,
    },
    /// A cluster: control commands go through one `ClusterConnection`, each consumer's read and
    /// replay connections to the master that serves its stream's slot.
    Cluster {
        /// The cluster nodes as given (credentials, database, TLS or not); a node's connection
        /// settings are the first seed's with the node's address.
        seeds: Vec<ConnectionInfo>,
    },
}

/// Where consumers connect. Holds redis-rs clients, whose `Debug` redacts passwords; the URL text
/// itself is never kept.
pub(crate) struct Backend {
    target: Target,
    options: ConnectionOptions,
    control: Control,
    /// `host:port/db` without credentials (the given cluster nodes, on a cluster), for logs and the
    /// duplicate-consumer check.
    display: String,
    /// The reads shared by the streams of multi-stream consumers.
    shared_readers: SharedReaders,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("server", &self.display)
            .field("options", &self.options)
            .finish()
    }
}

/// One node a consumer opens a connection of its own to (its read socket, its replay
/// connection): the address, the handshake settings, and how to speak TLS to it.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) info: ConnectionInfo,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
}

impl Node {
    /// `host:port`, for logs.
    pub(crate) fn address(&self) -> String {
        self.info.addr().to_string()
    }

    /// The node's cluster address, to route a command to it through the control connection.
    pub(crate) fn cluster_address(&self) -> Option<NodeAddress> {
        match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => Some(NodeAddress {
                host: host.clone(),
                port: *port,
            }),
            #[cfg(feature = "tls")]
            ConnectionAddr::TcpTls { host, port, .. } => Some(NodeAddress {
                host: host.clone(),
                port: *port,
            }),
            _ => None,
        }
    }
}

impl Backend {
    /// Opens a client for `url` without connecting yet.
    pub(crate) fn open(url: &str, options: ConnectionOptions) -> Result<Backend> {
        #[cfg(feature = "tls")]
        let client = match &options.tls {
            Some(certificates) => Client::build_with_tls(url, certificates.0.clone()),
            None => Client::open(url),
        };
        #[cfg(not(feature = "tls"))]
        let client = Client::open(url);
        let client = client.map_err(|e| Error::InvalidUrl {
            reason: crate::error::redact(&e.to_string()),
        })?;
        Backend::from_client(client, options)
    }

    /// Opens a cluster client for the cluster nodes `urls` without connecting yet. Every seed must
    /// carry the same credentials; any one that answers is enough.
    pub(crate) fn open_cluster(urls: &[String], options: ConnectionOptions) -> Result<Backend> {
        options.validate()?;
        #[cfg(feature = "tls")]
        crate::install_tls_provider();
        if urls.is_empty() {
            return Err(Error::config(
                None,
                "redis.cluster",
                "is empty: name at least one node of the cluster",
            ));
        }
        let invalid = |e: redis::RedisError| Error::InvalidUrl {
            reason: crate::error::redact(&e.to_string()),
        };
        let seeds = urls
            .iter()
            .map(|url| url.as_str().into_connection_info().map_err(invalid))
            .collect::<Result<Vec<_>>>()?;
        for seed in &seeds {
            if seed.redis_settings().db() != 0 {
                return Err(Error::config(
                    None,
                    "redis.cluster",
                    "names a database: a cluster has only database 0",
                ));
            }
            if matches!(seed.addr(), ConnectionAddr::Unix(_)) {
                return Err(Error::config(
                    None,
                    "redis.cluster",
                    "names a unix socket: cluster nodes are reached over TCP",
                ));
            }
            #[cfg(feature = "tls")]
            crate::tls::Tls::for_addr(seed.addr(), options.tls.as_ref())
                .map_err(|reason| Error::config(None, "tls_certificates", reason))?;
        }
        let builder = redis::cluster::ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.command_timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(2_000);
        #[cfg(feature = "tls")]
        let builder = match &options.tls {
            Some(certificates) => builder.certs(certificates.0.clone()),
            None => builder,
        };
        let client = builder.build().map_err(invalid)?;
        let display = format!(
            "cluster {}",
            seeds
                .iter()
                .map(|s| s.addr().to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Backend {
            target: Target::Cluster { seeds },
            options,
            control: Control::Cluster(ClusterControl(Arc::new(ClusterShared {
                client,
                conn: tokio::sync::Mutex::new(None),
            }))),
            display,
            shared_readers: SharedReaders::default(),
        })
    }

    pub(crate) fn from_client(client: Client, options: ConnectionOptions) -> Result<Backend> {
        options.validate()?;
        // Without a process-wide rustls provider, a rediss:// connection panics inside redis-rs.
        #[cfg(feature = "tls")]
        crate::install_tls_provider();
        let info = client.get_connection_info();
        let display = format!("{}/{}", info.addr(), info.redis_settings().db());
        #[cfg(feature = "tls")]
        let tls = crate::tls::Tls::for_addr(info.addr(), options.tls.as_ref())
            .map_err(|reason| Error::config(None, "tls_certificates", reason))?
            .map(Arc::new);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        let control =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| {
                Error::InvalidUrl {
                    reason: crate::error::redact(&e.to_string()),
                }
            })?;
        Ok(Backend {
            target: Target::Single {
                client: Box::new(client),
                #[cfg(feature = "tls")]
                tls,
            },
            options,
            control: Control::Single(control),
            display,
            shared_readers: SharedReaders::default(),
        })
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The node a consumer of `stream` opens its own connections to: the server, or on a cluster
    /// the master that serves the stream's slot now, looked up through the control connection.
    /// On a cluster whose slot has no master (a killed master not yet replaced) it fails with
    /// `CLUSTERDOWN`, a transient error.
    pub(crate) async fn node_for(&self, stream: &str) -> redis::RedisResult<Node> {
        match &self.target {
            Target::Single {
                client,
                #[cfg(feature = "tls")]
                tls,
            } => Ok(Node {
                info: client.get_connection_info().clone(),
                #[cfg(feature = "tls")]
                tls: tls.clone(),
            }),
            Target::Cluster { seeds } => {
                let mut control = self.control.clone();
                let owner = crate::cluster::resolve_owner(&mut control, stream.as_bytes())
                    .await?
                    .ok_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                            "no master serves the slot",
                            format!(
                                "stream `{stream}` (slot {})",
                                crate::cluster::key_slot(stream.as_bytes())
                            ),
                        ))
                    })?;
                self.cluster_node(seeds, &owner)
            }
        }
    }

    /// A node of the cluster with the given nodes' connection settings.
    fn cluster_node(&self, seeds: &[ConnectionInfo], at: &NodeAddress) -> redis::RedisResult<Node> {
        let seed = seeds.first().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed node"))
        })?;
        let addr = match seed.addr() {
            #[cfg(feature = "tls")]
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host: at.host.clone(),
                port: at.port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(at.host.clone(), at.port),
        };
        #[cfg(feature = "tls")]
        let tls = crate::tls::Tls::for_addr(&addr, self.options.tls.as_ref())
            .map_err(|reason| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "TLS set-up failed",
                    reason,
                ))
            })?
            .map(Arc::new);
        Ok(Node {
            info: seed.clone().set_addr(addr),
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// The shared control connection (a cheap clone of one multiplexed, self-reconnecting connection).
    pub(crate) fn control(&self) -> Control {
        self.control.clone()
    }

    /// The reads shared by the streams of multi-stream consumers (one per server or cluster
    /// slot, group and consumer name).
    pub(crate) fn shared_readers(&self) -> &SharedReaders {
        &self.shared_readers
    }

    /// Timeout of one connection attempt.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.options.connect_timeout
    }

    /// Whether `start` skips the reachability check and lets the consumers retry.
    pub(crate) fn waits_for_redis(&self) -> bool {
        self.options.wait_for_redis
    }

    /// Response timeout of acks, claims and admin commands.
    pub(crate) fn command_timeout(&self) -> Duration {
        self.options.command_timeout
    }

    /// Closes the shared control connection once every consumer has stopped: `QUIT` makes the
    /// server reply and let go of the connection, so none is left when a shutdown returns. Not
    /// with RESP3, where redis-rs would reconnect at once on the server's close; and a refused
    /// `QUIT` (an ACL without it) leaves the connection to close when the last handle is dropped.
    pub(crate) async fn close(&self) {
        // A cluster's connections (one per master) close when the connection is let go of.
        let Target::Single { client, .. } = &self.target else {
            if let Control::Cluster(control) = &self.control {
                control.close().await;
            }
            return;
        };
        if client
            .get_connection_info()
            .redis_settings()
            .protocol()
            .supports_resp3()
        {
            return;
        }
        let mut control = self.control.clone();
        // Bounded: with Redis unreachable, a shutdown must not wait for reconnect attempts, and it
        // stays within the documented deadline (the consumers' own plus 1 s).
        let limit = self.options.command_timeout.min(Duration::from_millis(250));
        let quit = redis::cmd("QUIT");
        match tokio::time::timeout(limit, quit.query_async::<()>(&mut control)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "QUIT refused; the control connection closes when dropped")
            }
            Err(_) => tracing::debug!("QUIT timed out; the control connection closes when dropped"),
        }
    }

    /// Connects once and sends `PING`, to fail fast at start when Redis cannot be reached or
    /// refuses the credentials. The error names the server and says what to check.
    pub(crate) async fn check_reachable(&self) -> Result<()> {
        match &self.target {
            Target::Single { client, .. } => self.check_node(client, &self.display).await,
            Target::Cluster { seeds } => {
                // Any seed that answers is enough; a refused password is reported at once, since
                // every node has the same users.
                let mut unreachable = Vec::new();
                for seed in seeds {
                    let display = seed.addr().to_string();
                    #[cfg(feature = "tls")]
                    let client = match &self.options.tls {
                        Some(c) => Client::build_with_tls(seed.clone(), c.0.clone()),
                        None => Client::open(seed.clone()),
                    };
                    #[cfg(not(feature = "tls"))]
                    let client = Client::open(seed.clone());
                    let client = client.map_err(|e| Error::InvalidUrl {
                        reason: crate::error::redact(&e.to_string()),
                    })?;
                    match self.check_node(&client, &display).await {
                        Ok(()) => return Ok(()),
                        Err(e) if e.is_authentication_failure() => return Err(e),
                        Err(e) => unreachable.push(e),
                    }
                }
                Err(unreachable.pop().map_or_else(
                    || self.unreachable("no seed node".into()),
                    |last| match last {
                        Error::Fatal {
                            command: "connecting to Redis",
                            hint,
                            ..
                        } => Error::Fatal {
                            consumer: None,
                            command: "connecting to Redis",
                            reason: format!(
                                "could not reach any seed node of the {}",
                                self.display
                            ),
                            hint,
                        },
                        other => other,
                    },
                ))
            }
        }
    }

    /// [`Backend::check_reachable`] for one node.
    async fn check_node(&self, client: &Client, display: &str) -> Result<()> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(Some(self.options.command_timeout));
        // One overall bound as well: a server that accepts the connection but never answers the
        // handshake must not hold `start` longer than both timeouts together.
        let limit = self.options.connect_timeout + self.options.command_timeout;
        // Connecting runs the handshake (AUTH, SELECT): it fails on a refused password or
        // database. No command follows, so a least-privilege ACL user needs nothing more. Without
        // a password nothing is authenticated, so a PING asks whether the server wants one
        // (NOAUTH); the default user it then runs as may PING.
        let without_password = client
            .get_connection_info()
            .redis_settings()
            .password()
            .is_none();
        let attempt = async {
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            if without_password {
                redis::cmd("PING").query_async::<()>(&mut con).await?;
            }
            Ok::<_, redis::RedisError>(con)
        };
        let failed = match tokio::time::timeout(limit, attempt).await {
            // A master of a supported server, not a replica or a Sentinel (capabilities.rs).
            Ok(Ok(mut con)) => {
                let check =
                    crate::capabilities::check_data_node(&mut con, display, self.is_cluster());
                return tokio::time::timeout(self.options.command_timeout, check)
                    .await
                    .unwrap_or(Ok(()));
            }
            Ok(Err(e)) => e,
            Err(_) => {
                // A TLS mismatch says so, not "could not reach" (tls_advice.rs).
                let addr = client.get_connection_info().addr();
                if let Some(tls) = crate::tls_advice::explain(addr, "timed out", display).await {
                    return Err(tls);
                }
                return Err(unreachable_at(
                    display,
                    format!("no answer within {}", humantime::format_duration(limit)),
                ));
            }
        };
        let refused = |command: &'static str, reason: String, hint: &str| Error::Fatal {
            consumer: None,
            command,
            reason,
            hint: hint.to_owned(),
        };
        let check_credentials = "check the username and password in the Redis URL \
            (`redis://user:password@host:port`), and that the ACL user exists and is `on` \
            (`ACL LIST` shows both)";
        if failed.code() == Some("NOAUTH") {
            return Err(refused(
                "AUTH",
                format!(
                    "authentication failed at {}: the server requires a password and the URL has none",
                    display
                ),
                check_credentials,
            ));
        }
        if failed.kind() == redis::ErrorKind::AuthenticationFailed
            || failed.code() == Some("WRONGPASS")
        {
            return Err(refused(
                "AUTH",
                format!(
                    "authentication failed at {}: the server refused the username or password",
                    display
                ),
                check_credentials,
            ));
        }
        let addr = client.get_connection_info().addr();
        if let Some(tls) = crate::tls_advice::explain(addr, &failed.to_string(), display).await {
            return Err(tls);
        }
        if failed.is_timeout()
            || failed.is_io_error()
            || failed.is_connection_refusal()
            || failed.is_connection_dropped()
        {
            return Err(unreachable_at(
                display,
                crate::error::redact(&failed.to_string()),
            ));
        }
        Err(refused(
            "connecting to Redis",
            format!(
                "{} answered the connection with an error: {}",
                display,
                crate::error::redact(&failed.to_string())
            ),
            "check the Redis URL's database number and protocol, and the server's log",
        ))
    }

    fn unreachable(&self, what: String) -> Error {
        unreachable_at(&self.display, what)
    }

    /// The server address without credentials.
    pub(crate) fn server(&self) -> &str {
        &self.display
    }
}

fn unreachable_at(display: &str, what: String) -> Error {
    Error::Fatal {
        consumer: None,
        command: "connecting to Redis",
        reason: format!("could not reach {display}: {what}"),
        hint: "check that redis-server runs at that address and accepts connections from \
                   here (host, port, TLS or not), or set `wait_for_redis` (builder: \
                   `.wait_for_redis(true)`, millrace.toml: `[connection] wait_for_redis = true`) \
                   to start anyway and retry until Redis is there"
            .to_owned(),
    }
}

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
    async fn close(&self) {
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
