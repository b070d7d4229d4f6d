//! Throwaway `redis-server` processes.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use tempfile::TempDir;

use crate::tls::{self, TlsFiles};
use crate::TestkitError;

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

/// Options for a [`RedisServer`]; made by [`RedisServer::builder`].
#[derive(Clone)]
pub struct ServerBuilder {
    appendonly: Option<bool>,
    password: Option<String>,
    extra_args: Vec<String>,
    tls: bool,
    /// TLS material shared with other servers (a cluster's nodes), instead
    /// of a fresh CA per server.
    tls_files: Option<TlsFiles>,
    startup_timeout: Duration,
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

    /// Kills the server with `SIGKILL` (a crash: no AOF flush beyond what the
    /// fsync policy already wrote) and waits for it to be gone. Does nothing
    /// if it is not running.
    pub fn kill(&mut self) {
        let taken = self.lock_child().take();
        if let Some(mut child) = taken {
            // Errors mean it has already exited and been reaped.
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(port = self.port, "redis-server killed");
        }
    }

    /// Stops the server gracefully with `SIGTERM` — which Redis handles like
    /// `SHUTDOWN`: it fsyncs the AOF (if enabled) before exiting — and waits
    /// for it to exit. A frozen server is thawed first. Does nothing if it is
    /// not running.
    ///
    /// # Panics
    ///
    /// Panics (after killing it) if the server has not exited within 30 s.
    #[track_caller]
    pub fn stop(&mut self) {
        let taken = self.lock_child().take();
        let Some(mut child) = taken else { return };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        let pid = child.id();
        signal(pid, "CONT");
        signal(pid, "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "millrace-testkit: redis-server (port {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it\n--- server log ---\n{}",
                        self.port,
                        self.log()
                    );
                }
                Ok(Some(_)) | Err(_) => break,
            }
        }
        tracing::debug!(port = self.port, "redis-server stopped");
    }

    /// Starts the server again with the same port, directory and options
    /// (so an AOF written before [`kill`](Self::kill) or
    /// [`stop`](Self::stop) is loaded), and waits until it answers `PING`,
    /// i.e. until the data set is loaded. A running server is first stopped
    /// gracefully.
    ///
    /// # Panics
    ///
    /// Panics with the server log if it cannot start, in particular if
    /// something else took the port meanwhile.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("millrace-testkit: cannot restart redis-server: {e}");
        }
        tracing::debug!(port = self.port, pid = ?self.pid(), "redis-server restarted");
    }

    /// Suspends the process with `SIGSTOP`: it keeps its sockets, accepts TCP
    /// connections (the kernel does) but answers nothing, like a hung server.
    ///
    /// # Panics
    ///
    /// Panics if the server is not running.
    #[track_caller]
    pub fn freeze(&self) {
        match self.pid() {
            Some(pid) => signal(pid, "STOP"),
            None => panic!("millrace-testkit: freeze() on a redis-server that is not running"),
        }
    }

    /// Resumes a [`freeze`](Self::freeze)d process with `SIGCONT`.
    ///
    /// # Panics
    ///
    /// Panics if the server is not running.
    #[track_caller]
    pub fn thaw(&self) {
        match self.pid() {
            Some(pid) => signal(pid, "CONT"),
            None => panic!("millrace-testkit: thaw() on a redis-server that is not running"),
        }
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

    fn args(&self) -> Vec<OsString> {
        let dir = self.dir();
        let port = self.port.to_string();
        let log_file = dir.join(LOG_FILE);
        let mut args: Vec<OsString> = Vec::new();
        macro_rules! push {
            ($($a:expr),* $(,)?) => {{ $( args.push(OsString::from($a)); )* }};
        }
        push!("--bind", "127.0.0.1");
        match &self.tls {
            Some(tls) => push!(
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                &tls.cert,
                "--tls-key-file",
                &tls.key,
                "--tls-ca-cert-file",
                &tls.ca_cert,
                "--tls-auth-clients",
                "no",
            ),
            None => push!("--port", &port),
        }
        push!(
            "--dir",
            dir,
            "--save",
            "",
            "--enable-debug-command",
            "local"
        );
        match self.config.appendonly {
            Some(true) => push!("--appendonly", "yes", "--appendfsync", "always"),
            Some(false) => push!("--appendonly", "yes", "--appendfsync", "everysec"),
            None => push!("--appendonly", "no"),
        }
        push!(
            "--logfile",
            &log_file,
            "--daemonize",
            "no",
            "--protected-mode",
            "no"
        );
        if let Some(pw) = &self.config.password {
            push!("--requirepass", pw);
        }
        for a in &self.config.extra_args {
            push!(a);
        }
        args
    }

    /// Spawns the process (which must not be running) and waits until it is
    /// ready; on failure the process is gone.
    fn spawn_and_wait(&mut self) -> Result<(), TestkitError> {
        let log_offset = log_len(self.dir());
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(STDIO_FILE))
            .map_err(|e| TestkitError::io("opening the redis-server stdio log", e))?;
        let stderr = stdio
            .try_clone()
            .map_err(|e| TestkitError::io("cloning the redis-server stdio log", e))?;
        let child = Command::new(&self.binary)
            .args(self.args())
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(stderr)
            .spawn()
            .map_err(|e| TestkitError::io(format!("spawning {}", self.binary.display()), e))?;
        *self.lock_child() = Some(child);
        let result = self.wait_ready(log_offset);
        if result.is_err() {
            self.kill();
        }
        result
    }

    fn wait_ready(&self, log_offset: u64) -> Result<(), TestkitError> {
        let timeout = self.config.startup_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let pid = {
                let mut guard = self.lock_child();
                let Some(child) = guard.as_mut() else {
                    return Err(TestkitError::Exited {
                        port: self.port,
                        status: "<killed>".into(),
                        log: read_log(self.dir(), log_offset),
                    });
                };
                match child.try_wait() {
                    Ok(None) => child.id(),
                    Ok(Some(status)) => {
                        let log = read_log(self.dir(), log_offset);
                        return Err(if log.contains("Address already in use") {
                            TestkitError::PortInUse {
                                port: self.port,
                                log,
                            }
                        } else {
                            TestkitError::Exited {
                                port: self.port,
                                status: status.to_string(),
                                log,
                            }
                        });
                    }
                    Err(e) => return Err(TestkitError::io("waiting for redis-server", e)),
                }
            };
            let ready = if self.tls.is_some() {
                // We cannot speak TLS without a TLS stack; the log is ours, and
                // Redis logs this only after binding and loading the data set.
                read_log(self.dir(), log_offset).contains("Ready to accept connections")
            } else {
                probe(self.port, self.config.password.as_deref(), pid)
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    port: self.port,
                    timeout,
                    log: read_log(self.dir(), log_offset),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// Sends `signal` (a name such as `TERM`) to `pid` with the `kill` command.
fn signal(pid: u32, signal: &str) {
    static KILL: OnceLock<PathBuf> = OnceLock::new();
    let kill = KILL.get_or_init(|| {
        search_path(std::ffi::OsStr::new("kill"))
            .or_else(|| {
                ["/usr/bin/kill", "/bin/kill"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| is_executable(p))
            })
            .unwrap_or_else(|| PathBuf::from("kill"))
    });
    let status = Command::new(kill)
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("millrace-testkit: the `kill` command is not installed ({e}); install it with `apt-get install -y procps`")
        }
        Err(e) => panic!("millrace-testkit: running `kill -{signal} {pid}` failed: {e}"),
    }
}

/// Connects, authenticates if needed and sends `PING` and `INFO server`; true
/// if the answer is `PONG` from the process `expected_pid` (so a server of
/// someone else that won the race for the port is not mistaken for ours).
pub(crate) fn probe(port: u16, password: Option<&str>, expected_pid: u32) -> bool {
    fn inner(port: u16, password: Option<&str>, expected_pid: u32) -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut request = Vec::new();
        if let Some(pw) = password {
            resp_command(&mut request, &["AUTH", pw]);
        }
        resp_command(&mut request, &["PING"]);
        resp_command(&mut request, &["INFO", "server"]);
        (&stream).write_all(&request)?;
        let mut reader = BufReader::new(&stream);
        if password.is_some() && read_reply(&mut reader)? != "+OK" {
            return Ok(false);
        }
        if read_reply(&mut reader)? != "+PONG" {
            return Ok(false);
        }
        let info = read_reply(&mut reader)?;
        let wanted = format!("process_id:{expected_pid}");
        Ok(info.lines().any(|l| l.trim() == wanted))
    }
    inner(port, password, expected_pid).unwrap_or(false)
}

fn resp_command(out: &mut Vec<u8>, parts: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one RESP2 reply: a simple string/error/integer line as is
/// (`+PONG`), a bulk string as its content.
fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end().to_owned();
    let Some(len) = line.strip_prefix('$') else {
        return Ok(line);
    };
    let Ok(len) = len.parse::<usize>() else {
        return Ok(String::new()); // null bulk string
    };
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body)?;
    body.truncate(len);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn log_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG_FILE))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The server log from byte `offset` on, plus the stdout/stderr capture.
fn read_log(dir: &Path, offset: u64) -> String {
    let mut out = String::new();
    match File::open(dir.join(LOG_FILE)) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            if let Err(e) = f.read_to_end(&mut bytes) {
                out.push_str(&format!("<cannot read {LOG_FILE}: {e}>\n"));
            }
            let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
            out.push_str(&String::from_utf8_lossy(&bytes[start..]));
        }
        Err(e) => out.push_str(&format!("<no {LOG_FILE}: {e}>\n")),
    }
    if let Ok(stdio) = std::fs::read_to_string(dir.join(STDIO_FILE)) {
        if !stdio.trim().is_empty() {
            out.push_str("--- redis-server stdout/stderr ---\n");
            out.push_str(&stdio);
        }
    }
    out
}

pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The absolute path of the `redis-server` to run: `$MILLRACE_REDIS_SERVER`,
/// else the first `redis-server` on `PATH` (then the usual install
/// locations). Absolute because `DEBUG RESTART` re-executes `argv[0]`.
pub(crate) fn redis_server_binary() -> Result<PathBuf, TestkitError> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_redis_server)
        .clone()
        .map_err(|detail| TestkitError::RedisServerNotFound { detail })
}

fn find_redis_server() -> Result<PathBuf, String> {
    if let Some(value) = std::env::var_os(REDIS_SERVER_ENV) {
        let path = PathBuf::from(&value);
        let resolved = if path.components().count() == 1 {
            search_path(&value)
        } else {
            Some(path.clone())
        };
        return match resolved.filter(|p| is_executable(p)) {
            Some(p) => absolute(&p),
            None => Err(format!(
                "{REDIS_SERVER_ENV}={} is not an executable file",
                path.display()
            )),
        };
    }
    let kind = crate::ServerKind::current();
    if let Some(fetched) = crate::matrix::fetched_binary(kind)? {
        return Ok(fetched);
    }
    let candidate = search_path(std::ffi::OsStr::new("redis-server")).or_else(|| {
        ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    });
    match candidate {
        Some(p) => absolute(&p),
        None => Err(format!(
            "no `redis-server` on PATH ({}) nor in /usr/bin or /usr/local/bin, and {REDIS_SERVER_ENV} is not set",
            std::env::var("PATH").unwrap_or_default()
        )),
    }
}

/// Makes `p` absolute *without* resolving symlinks: Debian's
/// `/usr/bin/redis-server` is a symlink to `redis-check-rdb`, and the binary
/// picks its personality from `argv[0]`.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

pub(crate) fn search_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A port handed to one server of this process, not handed to another
/// until the server is dropped.
#[derive(Debug)]
pub(crate) struct PortReservation {
    pub(crate) port: u16,
}

fn reserved_ports() -> MutexGuard<'static, HashSet<u16>> {
    static RESERVED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    RESERVED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl PortReservation {
    /// Picks a port that can be bound on 127.0.0.1 right now.
    ///
    /// It prefers ports below the kernel's ephemeral range: a port from that
    /// range (what binding port 0 returns) can be grabbed by any outgoing
    /// connection as its local port while a killed server is down, and then
    /// the restart fails. Falls back to binding port 0.
    pub(crate) fn pick() -> Result<PortReservation, TestkitError> {
        let (lo, hi) = (15_000u16, ephemeral_range_start().saturating_sub(1));
        let mut reserved = reserved_ports();
        if hi > lo + 1_000 {
            let mut rng = rand::rng();
            for _ in 0..200 {
                let port = rng.random_range(lo..=hi);
                if !reserved.contains(&port) && bindable(port) {
                    reserved.insert(port);
                    return Ok(PortReservation { port });
                }
            }
        }
        for _ in 0..200 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| TestkitError::io("binding 127.0.0.1:0 to find a free port", e))?
                .port();
            if reserved.insert(port) {
                return Ok(PortReservation { port });
            }
        }
        Err(TestkitError::io(
            "finding a free port",
            std::io::ErrorKind::AddrInUse.into(),
        ))
    }
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        reserved_ports().remove(&self.port);
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn percent_encoding_keeps_unreserved() {
        assert_eq!(percent_encode("aZ9-._~"), "aZ9-._~");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn resp_encoding() {
        let mut out = Vec::new();
        resp_command(&mut out, &["AUTH", "pw"]);
        assert_eq!(out, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
    }

    #[test]
    fn reply_parsing() -> std::io::Result<()> {
        let mut r = BufReader::new(&b"+PONG\r\n$5\r\nab\r\nc\r\n-ERR x\r\n"[..]);
        assert_eq!(read_reply(&mut r)?, "+PONG");
        assert_eq!(read_reply(&mut r)?, "ab\r\nc");
        assert_eq!(read_reply(&mut r)?, "-ERR x");
        Ok(())
    }
}
