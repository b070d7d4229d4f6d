//! The `redis-server` process of a [`RedisServer`]: its arguments, spawned and waited for until it
//! answers, killed, stopped, restarted, frozen and thawed with signals, and its log read back.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{is_executable, probe, search_path, RedisServer, LOG_FILE, STDIO_FILE, STOP_TIMEOUT};
use crate::TestkitError;

impl RedisServer {
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
    pub(super) fn spawn_and_wait(&mut self) -> Result<(), TestkitError> {
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

/// Sends `signal` (a name such as `TERM`) to `pid` with the `kill` command.
pub(super) fn signal(pid: u32, signal: &str) {
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

pub(super) fn log_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG_FILE))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The server log from byte `offset` on, plus the stdout/stderr capture.
pub(super) fn read_log(dir: &Path, offset: u64) -> String {
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
