//! The error type of the testkit.

use std::path::PathBuf;
use std::time::Duration;

/// Why a throwaway `redis-server` (or its TLS material) could not be set up.
///
/// [`ServerBuilder::start`](crate::ServerBuilder::start) and
/// [`RedisServer::start`](crate::RedisServer::start) panic with this error's
/// message; [`ServerBuilder::try_start`](crate::ServerBuilder::try_start)
/// returns it. Every variant that concerns a started process carries the
/// server log, so the message alone is enough to diagnose a failure in CI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// No usable `redis-server` binary was found.
    #[error(
        "redis-server binary not found: {detail}. The millrace tests need a real Redis \
         (>= 7.0): install it with `apt-get install -y redis-server` (Debian/Ubuntu), or set \
         MILLRACE_REDIS_SERVER to the absolute path of a redis-server binary"
    )]
    RedisServerNotFound {
        /// What was looked at.
        detail: String,
    },

    /// An external tool the testkit shells out to (`openssl`, `kill`) is missing.
    #[error("`{tool}` not found ({source}); install it with `{install}`")]
    ToolNotFound {
        /// The missing program.
        tool: &'static str,
        /// The suggested install command.
        install: &'static str,
        /// The error from trying to run it.
        #[source]
        source: std::io::Error,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The server could not listen on its port because something else holds it.
    #[error("redis-server could not bind 127.0.0.1:{port} (address already in use)\n--- server log ---\n{log}")]
    PortInUse {
        /// The port that was taken.
        port: u16,
        /// The server log.
        log: String,
    },

    /// The server process exited while we waited for it to become ready.
    #[error(
        "redis-server (port {port}) exited during startup with {status}\n--- server log ---\n{log}"
    )]
    Exited {
        /// The port it was started on.
        port: u16,
        /// Its exit status.
        status: String,
        /// The server log.
        log: String,
    },

    /// The server did not answer `PING` within the startup timeout.
    #[error("redis-server (port {port}) did not become ready within {timeout:?}\n--- server log ---\n{log}")]
    NotReady {
        /// The port it was started on.
        port: u16,
        /// How long we waited.
        timeout: Duration,
        /// The server log.
        log: String,
    },

    /// A cluster could not be created, or did not reach the state a helper
    /// waited for.
    #[error("{what}\n{detail}")]
    Cluster {
        /// What failed.
        what: String,
        /// The evidence: the last check, `redis-cli` output, node logs.
        detail: String,
    },

    /// Generating the TLS certificates with the `openssl` CLI failed.
    #[error("generating TLS material in {dir} failed at `{step}`:\n{output}")]
    Tls {
        /// Where the certificates were being written.
        dir: PathBuf,
        /// The openssl command that failed.
        step: String,
        /// Its stderr/stdout.
        output: String,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }
}
