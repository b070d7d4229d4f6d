//! [`Backend`]: where consumers connect (one server or a cluster), opened from a URL, a client or
//! cluster seeds, and the node a consumer of a stream opens its own connections to.

use std::fmt;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::control::{ClusterControl, Control};
use super::ConnectionOptions;
use crate::cluster::NodeAddress;
use crate::error::{Error, Result};

/// Where consumers connect: one server, or a Redis Cluster.
pub(super) enum Target {
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
    pub(super) target: Target,
    pub(super) options: ConnectionOptions,
    control: Control,
    /// `host:port/db` without credentials (the given cluster nodes, on a cluster), for logs and the
    /// duplicate-consumer check.
    pub(super) display: String,
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
            control: Control::Cluster(ClusterControl::new(client)),
            display,
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
        })
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The node a consumer of `stream` opens its own connections to: the server, or on a cluster
    /// the master that serves the stream's slot now, looked up through the control connection:
    /// `CLUSTER SHARDS` asked of the node the control connection takes for the slot (the one that
    /// served it last, which knows best where it went; the control connection follows `MOVED`),
    /// not of any node, whose view may be older. On a cluster whose slot has no master (a killed
    /// master not yet replaced) it fails with `CLUSTERDOWN`, a transient error.
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
                let slot = crate::cluster::key_slot(stream.as_bytes());
                let mut control = self.control.at_slot(slot);
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

    /// The master `at` of the cluster (a `MOVED` reply names it), as a node a consumer opens its
    /// own connections to; on one server, the server.
    pub(crate) async fn node_at(&self, stream: &str, at: &NodeAddress) -> redis::RedisResult<Node> {
        match &self.target {
            Target::Cluster { seeds } => self.cluster_node(seeds, at),
            Target::Single { .. } => self.node_for(stream).await,
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

    /// The server address without credentials.
    pub(crate) fn server(&self) -> &str {
        &self.display
    }
}
