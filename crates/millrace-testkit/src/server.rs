//! Throwaway `redis-server` processes: [`RedisServer`] and what it says about itself. Its options
//! are in `builder`, the process (spawned, signalled, waited for, its log) in `process`, finding
//! the binary in `binary`, ports in `ports`, and the raw RESP probe in `probe`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tempfile::TempDir;

use crate::tls::TlsFiles;

mod binary;
mod builder;
mod ports;
mod probe;
mod process;

pub(crate) use binary::{is_executable, redis_server_binary, search_path};
pub use builder::ServerBuilder;
pub(crate) use ports::PortReservation;
pub(crate) use probe::{percent_encode, probe};
use process::read_log;

/// Environment variable naming the `redis-server` binary to use instead of
/// the one found on `PATH`.
pub const REDIS_SERVER_ENV: &str = "MILLRACE_REDIS_SERVER";

/// How long [`ServerBuilder::start`] and [`RedisServer::restart`] wait for a
/// server to answer `PING` unless told otherwise.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`RedisServer::stop`] waits for a graceful exit before it falls
/// back to `SIGKILL`.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many ports [`ServerBuilder::try_start`] tries before it gives up.
const PORT_ATTEMPTS: usize = 5;

const LOG_FILE: &str = "redis.log";
const STDIO_FILE: &str = "redis.stdio";

/// A real `redis-server` process running in its own temporary directory,
/// bound to `127.0.0.1` on a free port.
///
/// Started with [`RedisServer::start`] (defaults) or
/// [`RedisServer::builder`]. Without further options it runs with
/// persistence off (`--save "" --appendonly no`), `DEBUG` enabled for local
/// connections, protected mode off and its log in [`dir`](Self::dir).
///
/// Dropping it kills the process with `SIGKILL`, reaps it and removes its
/// directory. The methods that change the process state ([`kill`](Self::kill),
/// [`stop`](Self::stop), [`restart`](Self::restart)) take `&mut self`; every
/// other method takes `&self`, and the type is `Send + Sync`, so an
/// `Arc<RedisServer>` can be shared between tasks.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    config: ServerBuilder,
    tls: Option<TlsFiles>,
    child: Mutex<Option<Child>>,
    _reservation: PortReservation,
    // Declared last so that it is dropped after the process is dead.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default options; see [`ServerBuilder::start`].
    ///
    /// # Panics
    ///
    /// Panics with the reason and the server log if it cannot start.
    #[track_caller]
    pub fn start() -> RedisServer {
        ServerBuilder::default().start()
    }

    /// Options for a server: persistence, password, TLS, raw arguments.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The URL clients should use: `redis://127.0.0.1:PORT`,
    /// `redis://:PASSWORD@127.0.0.1:PORT` with a password (percent-encoded),
    /// `rediss://…` with TLS.
    pub fn url(&self) -> String {
        match &self.config.password {
            Some(pw) => format!(
                "{}://:{}@127.0.0.1:{}",
                self.scheme(),
                percent_encode(pw),
                self.port
            ),
            None => self.url_without_password(),
        }
    }

    /// The URL without credentials, `redis://127.0.0.1:PORT` (or `rediss://`).
    pub fn url_without_password(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.port)
    }

    /// The password set with [`ServerBuilder::password`], if any.
    pub fn password(&self) -> Option<&str> {
        self.config.password.as_deref()
    }

    /// The port the server listens on (the TLS port for a TLS server). It
    /// stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, or `None` while the server is not running (after
    /// [`kill`](Self::kill), [`stop`](Self::stop), or if it died).
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.lock_child();
        let c = child.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    /// Whether the process is alive (a [`freeze`](Self::freeze)d server is).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// A `redis::Client` for [`url`](Self::url).
    ///
    /// For a TLS server this is of little use: without one of `redis`'s TLS
    /// features `rediss://` is rejected (this panics), and with one the
    /// client does not trust the throwaway CA (connecting fails with
    /// `UnknownIssuer`). Build the client from
    /// [`ca_cert_path`](Self::ca_cert_path) instead (needs `redis`'s
    /// `tls-rustls` feature and a rustls crypto provider):
    ///
    /// ```ignore
    /// let ca = std::fs::read(server.ca_cert_path().expect("TLS server"))?;
    /// let client = redis::Client::build_with_tls(
    ///     server.url(),
    ///     redis::TlsCertificates { client_tls: None, root_cert: Some(ca) },
    /// )?;
    /// ```
    ///
    /// # Panics
    ///
    /// Panics if the `redis` crate rejects the URL.
    pub fn client(&self) -> redis::Client {
        match redis::Client::open(self.url()) {
            Ok(client) => client,
            Err(e) => panic!(
                "millrace-testkit: redis::Client::open({}) failed: {e}",
                self.url_without_password()
            ),
        }
    }

    /// The server's data directory (its `--dir`), which also holds its log
    /// and TLS material. It is kept across [`restart`](Self::restart) and
    /// removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PEM file of the CA that signed a TLS server's certificate (valid
    /// for `127.0.0.1` and `localhost`); `None` without
    /// [`ServerBuilder::tls`]. See [`client`](Self::client) for a TLS client
    /// that trusts it.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca_cert.clone())
    }

    /// The server log (all runs, across restarts), followed by anything the
    /// process wrote to stdout/stderr. Never fails: an unreadable log yields
    /// a note saying so.
    pub fn log(&self) -> String {
        read_log(self.dir(), 0)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("url", &self.url_without_password())
            .field("pid", &self.pid())
            .field("dir", &self.dir())
            .field("binary", &self.binary)
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;
    use crate::TestkitError;

    #[test]
    fn a_taken_port_is_reported_as_such() -> Result<(), TestkitError> {
        let squatter =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| TestkitError::io("bind", e))?;
        let port = squatter
            .local_addr()
            .map_err(|e| TestkitError::io("local_addr", e))?
            .port();
        let mut server = RedisServer {
            binary: redis_server_binary()?,
            port,
            config: ServerBuilder::default(),
            tls: None,
            child: Mutex::new(None),
            _reservation: PortReservation { port },
            dir: TempDir::new().map_err(|e| TestkitError::io("tempdir", e))?,
        };
        match server.spawn_and_wait() {
            Err(TestkitError::PortInUse { port: p, .. }) => assert_eq!(p, port),
            other => panic!("expected PortInUse, got {other:?}"),
        }
        assert!(!server.is_running());
        Ok(())
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RedisServer>();
        check::<ServerBuilder>();
        check::<crate::FaultProxy>();
    }
}
