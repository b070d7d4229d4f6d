//! [`ServerBuilder`]: the options of a [`RedisServer`] (persistence, password, TLS, raw
//! arguments, start-up timeout) and starting it on a free port.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use super::{
    redis_server_binary, PortReservation, RedisServer, DEFAULT_STARTUP_TIMEOUT, PORT_ATTEMPTS,
};
use crate::tls::{self, TlsFiles};
use crate::TestkitError;

/// Options for a [`RedisServer`]; made by [`RedisServer::builder`].
#[derive(Clone)]
pub struct ServerBuilder {
    pub(super) appendonly: Option<bool>,
    pub(super) password: Option<String>,
    pub(super) extra_args: Vec<String>,
    pub(super) tls: bool,
    /// TLS material shared with other servers (a cluster's nodes), instead
    /// of a fresh CA per server.
    pub(super) tls_files: Option<TlsFiles>,
    pub(super) startup_timeout: Duration,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("appendonly", &self.appendonly)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("extra_args", &self.extra_args)
            .field("tls", &self.tls)
            .field("tls_files", &self.tls_files)
            .field("startup_timeout", &self.startup_timeout)
            .finish()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            appendonly: None,
            password: None,
            extra_args: Vec::new(),
            tls: false,
            tls_files: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl ServerBuilder {
    /// Turns on the append-only file: `--appendonly yes --appendfsync always`
    /// when `fsync_always`, else `--appendfsync everysec`. With it, data
    /// written before [`RedisServer::kill`] survives [`RedisServer::restart`]
    /// (with `everysec`, up to about one second of writes may be lost, as in
    /// production).
    pub fn appendonly(mut self, fsync_always: bool) -> Self {
        self.appendonly = Some(fsync_always);
        self
    }

    /// Requires clients to authenticate (`--requirepass`). [`RedisServer::url`]
    /// then carries the password (`redis://:PW@127.0.0.1:PORT`).
    pub fn password(mut self, pw: impl Into<String>) -> Self {
        self.password = Some(pw.into());
        self
    }

    /// Appends one raw command-line argument, e.g. `.arg("--maxmemory-policy")
    /// .arg("noeviction")`. Arguments are passed after the testkit's own, so a
    /// repeated single-valued option overrides the default.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra_args.push(a.into());
        self
    }

    /// Serves TLS only: generates (with the `openssl` CLI) a throwaway CA and
    /// a server certificate for `IP:127.0.0.1, DNS:localhost` in the server's
    /// directory, and starts with `--port 0 --tls-port P` and
    /// `--tls-auth-clients no`. [`RedisServer::url`] is then
    /// `rediss://127.0.0.1:P` and [`RedisServer::ca_cert_path`] names the CA
    /// certificate clients must trust.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Serves TLS like [`tls`](Self::tls), with certificates made once for
    /// several servers (all the nodes of a cluster trust one CA).
    pub(crate) fn tls_with(mut self, files: TlsFiles) -> Self {
        self.tls = true;
        self.tls_files = Some(files);
        self
    }

    /// How long to wait for the server to answer `PING` after spawning it, at
    /// start and at every [`RedisServer::restart`] (default
    /// [`DEFAULT_STARTUP_TIMEOUT`], 10 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// Panics with the reason and the server log if it cannot start, and with
    /// install instructions if `redis-server` is not installed.
    #[track_caller]
    pub fn start(self) -> RedisServer {
        match self.try_start() {
            Ok(server) => server,
            Err(e) => panic!("millrace-testkit: cannot start redis-server: {e}"),
        }
    }

    /// Starts the server and waits until it answers `PING`, returning the
    /// reason (with the server log) if it cannot.
    ///
    /// If the chosen port turns out to be taken, it retries on other ports a
    /// few times before failing.
    pub fn try_start(self) -> Result<RedisServer, TestkitError> {
        let binary = redis_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("millrace-redis-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temporary directory", e))?;
        let tls = if let Some(files) = &self.tls_files {
            Some(files.clone())
        } else if self.tls {
            Some(tls::generate(&dir.path().join("tls"))?)
        } else {
            None
        };

        let reservation = PortReservation::pick()?;
        let mut server = RedisServer {
            binary,
            port: reservation.port,
            config: self,
            tls,
            child: Mutex::new(None),
            _reservation: reservation,
            dir,
        };
        let mut attempt = 1;
        loop {
            match server.spawn_and_wait() {
                Ok(()) => {
                    tracing::debug!(
                        port = server.port,
                        dir = %server.dir().display(),
                        pid = ?server.pid(),
                        "redis-server started"
                    );
                    return Ok(server);
                }
                Err(TestkitError::PortInUse { port, .. }) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(
                        port,
                        attempt,
                        "port taken while starting redis-server, retrying"
                    );
                    attempt += 1;
                    let reservation = PortReservation::pick()?;
                    server.port = reservation.port;
                    server._reservation = reservation;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
