//! Connections: one shared control connection (acks, claims, admin, replays) and one dedicated
//! blocking read connection per consumer (see `reader`), whose response timeout exceeds its BLOCK.
//! Both speak TLS for a `rediss://` server: the control connection through redis-rs, the read
//! connections through `crate::tls`.
//!
//! Everything that talks to Redis goes through [`Backend`]; a Redis Cluster backend would add a
//! variant here and hand out cluster connections, and the consumer would not change.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client};

use crate::error::{Error, Result};

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

/// Where consumers connect. Holds a `redis::Client`, whose `Debug` redacts passwords; the URL text
/// itself is never kept.
pub(crate) struct Backend {
    client: Client,
    options: ConnectionOptions,
    control: ConnectionManager,
    /// `host:port/db` without credentials, for logs and the duplicate-consumer check.
    display: String,
    /// How readers connect to a `rediss://` server.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Tls>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("server", &self.display)
            .field("options", &self.options)
            .finish()
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

    pub(crate) fn from_client(client: Client, options: ConnectionOptions) -> Result<Backend> {
        options.validate()?;
        // Without a process-wide rustls provider, a rediss:// connection panics inside redis-rs.
        #[cfg(feature = "tls")]
        crate::install_tls_provider();
        let info = client.get_connection_info();
        let display = format!("{}/{}", info.addr(), info.redis_settings().db());
        #[cfg(feature = "tls")]
        let tls = crate::tls::Tls::for_addr(info.addr(), options.tls.as_ref())
            .map_err(|reason| Error::config(None, "tls_certificates", reason))?;
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
            client,
            options,
            control,
            display,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// The shared control connection (a cheap clone of one multiplexed, self-reconnecting connection).
    pub(crate) fn control(&self) -> ConnectionManager {
        self.control.clone()
    }

    /// How readers connect over TLS; `None` for a plain server.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(&self) -> Option<&crate::tls::Tls> {
        self.tls.as_ref()
    }

    /// The client, for connections of a consumer's own (its reader).
    pub(crate) fn client(&self) -> &Client {
        &self.client
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
        if self
            .client
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
        let without_password = self
            .client
            .get_connection_info()
            .redis_settings()
            .password()
            .is_none();
        let attempt = async {
            let mut con = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            if without_password {
                redis::cmd("PING").query_async::<()>(&mut con).await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        let failed = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(self.unreachable(format!(
                    "no answer within {}",
                    humantime::format_duration(limit)
                )))
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
                    self.display
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
                    self.display
                ),
                check_credentials,
            ));
        }
        if failed.is_timeout()
            || failed.is_io_error()
            || failed.is_connection_refusal()
            || failed.is_connection_dropped()
        {
            return Err(self.unreachable(crate::error::redact(&failed.to_string())));
        }
        Err(refused(
            "connecting to Redis",
            format!(
                "{} answered the connection with an error: {}",
                self.display,
                crate::error::redact(&failed.to_string())
            ),
            "check the Redis URL's database number and protocol, and the server's log",
        ))
    }

    fn unreachable(&self, what: String) -> Error {
        Error::Fatal {
            consumer: None,
            command: "connecting to Redis",
            reason: format!("could not reach {}: {what}", self.display),
            hint: "check that redis-server runs at that address and accepts connections from \
                   here (host, port, TLS or not), or set `wait_for_redis` (builder: \
                   `.wait_for_redis(true)`, millrace.toml: `[connection] wait_for_redis = true`) \
                   to start anyway and retry until Redis is there"
                .to_owned(),
        }
    }

    /// The server address without credentials.
    pub(crate) fn server(&self) -> &str {
        &self.display
    }
}
