//! Connections: one shared control connection (acks, claims, admin, replays) and one dedicated
//! blocking read connection per consumer (see `reader`), whose response timeout exceeds its BLOCK.
//!
//! Everything that talks to Redis goes through [`Backend`]; a Redis Cluster backend would add a
//! variant here and hand out cluster connections, and the consumer would not change.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Client;

use crate::error::{Error, Result};

/// Connection settings shared by every consumer of a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionOptions {
    /// Timeout of one connection attempt. Default 2s.
    pub connect_timeout: Duration,
    /// Response timeout of acks, claims and admin commands. Default 5s.
    pub command_timeout: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
        }
    }
}

impl ConnectionOptions {
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
        let client = Client::open(url).map_err(|e| Error::InvalidUrl {
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
        })
    }

    /// The shared control connection (a cheap clone of one multiplexed, self-reconnecting connection).
    pub(crate) fn control(&self) -> ConnectionManager {
        self.control.clone()
    }

    /// The client, for connections of a consumer's own (its reader thread).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Timeout of one connection attempt.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.options.connect_timeout
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

    /// The server address without credentials.
    pub(crate) fn server(&self) -> &str {
        &self.display
    }
}
