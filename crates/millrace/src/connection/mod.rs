//! Connections: one shared control connection (acks, claims, admin, replays) and one dedicated
//! blocking read connection per consumer (see `reader`), whose response timeout exceeds its BLOCK.
//! Both speak TLS for a `rediss://` server: the control connection through redis-rs, the read
//! connections through `crate::tls`.
//!
//! Everything that talks to Redis goes through [`Backend`]. On a Redis Cluster the control
//! connection is redis-rs's `ClusterConnection` (one connection per master, `MOVED` and `ASK`
//! followed by redis-rs), behind the same [`Control`] handle, and a consumer's own connections go
//! to the master that serves its stream ([`Backend::node_for`]).

mod backend;
mod control;
mod reachable;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::error::{Error, Result};

pub(crate) use backend::{Backend, Node};
pub(crate) use control::{ClusterControl, Control};

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
