//! A primary with replicas behind Redis Sentinel on loopback: 1 master, 2 replicas and 3
//! Sentinels (quorum 2), with graceful (`SENTINEL FAILOVER`) and kill -9 failovers.

use std::fmt;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::server::{percent_encode, probe, redis_server_binary, PortReservation};
use crate::{RedisServer, TestkitError};

/// The master name the Sentinels monitor.
pub const SENTINEL_MASTER_NAME: &str = "mymaster";

/// How long a failover may take before [`SentinelGroup::failover`] and
/// [`SentinelGroup::kill_master`] give up (down-after 1 s, failover-timeout 5 s).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// 1 master + 2 replicas + 3 Sentinels on loopback, every data node and Sentinel with the same
/// optional password (`requirepass`, `masterauth`, `sentinel auth-pass`). Dropping it kills every
/// process.
pub struct SentinelGroup {
    /// The data nodes; which one is the master changes with failovers.
    nodes: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
    password: Option<String>,
}

struct Sentinel {
    port: u16,
    child: Child,
    _reservation: PortReservation,
    dir: TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl fmt::Debug for SentinelGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelGroup")
            .field(
                "nodes",
                &self.nodes.iter().map(RedisServer::port).collect::<Vec<_>>(),
            )
            .field("sentinels", &self.sentinel_ports())
            .finish()
    }
}

impl SentinelGroup {
    /// Starts the group without passwords. See [`start_with_password`](Self::start_with_password).
    ///
    /// # Panics
    ///
    /// Panics with the reason (and logs) if a process cannot start or the Sentinels do not see
    /// the master and both replicas.
    #[track_caller]
    pub fn start() -> SentinelGroup {
        Self::try_start(None).unwrap_or_else(|e| panic!("millrace-testkit: sentinel group: {e}"))
    }

    /// Starts the group with `password` on every data node and every Sentinel.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    #[track_caller]
    pub fn start_with_password(password: &str) -> SentinelGroup {
        Self::try_start(Some(password))
            .unwrap_or_else(|e| panic!("millrace-testkit: sentinel group: {e}"))
    }

    fn try_start(password: Option<&str>) -> Result<SentinelGroup, TestkitError> {
        let data = |b: crate::ServerBuilder| match password {
            Some(pw) => b.password(pw).arg("--masterauth").arg(pw),
            None => b,
        };
        let master = data(RedisServer::builder()).start();
        let mut nodes = vec![master];
        for _ in 0..2 {
            let replica = data(RedisServer::builder())
                .arg("--replicaof")
                .arg("127.0.0.1")
                .arg(nodes[0].port().to_string())
                .start();
            nodes.push(replica);
        }
        let mut group = SentinelGroup {
            nodes,
            sentinels: Vec::new(),
            password: password.map(str::to_owned),
        };
        let master_port = group.nodes[0].port();
        for _ in 0..3 {
            let sentinel = start_sentinel(master_port, password)?;
            group.sentinels.push(sentinel);
        }
        // Every Sentinel knows the master, both replicas and the other Sentinels.
        group.wait(
            "the sentinels to see 2 replicas and 2 other sentinels",
            |g| {
                g.sentinels.iter().all(|s| {
                    let info = g.ask(s.port, &["SENTINEL", "MASTER", SENTINEL_MASTER_NAME]);
                    field(&info, "num-slaves") == Some(2)
                        && field(&info, "num-other-sentinels") == Some(2)
                })
            },
        )?;
        Ok(group)
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT` of each Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_ports()
            .into_iter()
            .map(|p| match &self.password {
                Some(pw) => format!("redis://:{}@127.0.0.1:{p}", percent_encode(pw)),
                None => format!("redis://127.0.0.1:{p}"),
            })
            .collect()
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The master name the Sentinels monitor ([`SENTINEL_MASTER_NAME`]).
    pub fn master_name(&self) -> &'static str {
        SENTINEL_MASTER_NAME
    }

    /// The port of the master as the first answering Sentinel reports it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = self.ask(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER_NAME],
            );
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// The data node serving as master now.
    pub fn master(&self) -> &RedisServer {
        let port = self.master_port().expect("a sentinel answers");
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("the master is one of the group's nodes")
    }

    /// Every data node (master and replicas).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A graceful failover (`SENTINEL FAILOVER`); returns once every Sentinel names the new
    /// master and it answers as a master. Returns the new master's port.
    ///
    /// # Panics
    ///
    /// Panics if that does not happen within 30 s.
    #[track_caller]
    pub fn failover(&self) -> u16 {
        let old = self.master_port().expect("a sentinel answers");
        let reply = self.ask(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", SENTINEL_MASTER_NAME],
        );
        assert!(reply.starts_with("+OK"), "SENTINEL FAILOVER: {reply}");
        self.await_new_master(old)
    }

    /// Kills the master with `SIGKILL`; returns once the Sentinels promoted a replica and it
    /// answers as a master (the port of the new master). The killed node stays down until
    /// [`restart_node`](Self::restart_node).
    ///
    /// # Panics
    ///
    /// Panics if no replica is promoted within 30 s.
    #[track_caller]
    pub fn kill_master(&mut self) -> u16 {
        let old = self.master_port().expect("a sentinel answers");
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == old)
            .expect("the master is one of the group's nodes");
        node.kill();
        self.await_new_master(old)
    }

    /// Restarts the data node on `port` (it rejoins as a replica of the current master).
    pub fn restart_node(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.restart();
        }
    }

    #[track_caller]
    fn await_new_master(&self, old: u16) -> u16 {
        let mut new = None;
        let result = self.wait("a new master named by every sentinel", |g| {
            let named: Vec<Option<u16>> = g
                .sentinels
                .iter()
                .map(|s| {
                    let r = g.ask(
                        s.port,
                        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER_NAME],
                    );
                    r.lines().nth(1)?.trim().parse().ok()
                })
                .collect();
            let Some(Some(port)) = named.first().copied() else {
                return false;
            };
            if port == old || named.iter().any(|p| *p != Some(port)) {
                return false;
            }
            let role = g.ask_node(port, &["ROLE"]);
            new = Some(port);
            role.lines().next().is_some_and(|l| l.contains("master"))
        });
        if let Err(e) = result {
            panic!("millrace-testkit: {e}");
        }
        new.expect("set when the wait succeeds")
    }

    fn wait(
        &self,
        what: &str,
        mut done: impl FnMut(&SentinelGroup) -> bool,
    ) -> Result<(), TestkitError> {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        while !done(self) {
            if Instant::now() >= deadline {
                let logs: String = self
                    .sentinels
                    .iter()
                    .map(|s| {
                        std::fs::read_to_string(s.dir.path().join("sentinel.log"))
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join("\n---\n");
                return Err(TestkitError::Cluster {
                    what: format!("waiting for {what}"),
                    detail: format!(
                        "not within {FAILOVER_TIMEOUT:?}\n--- sentinel logs ---\n{logs}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// One command to a Sentinel with redis-cli-like text output (lines of the reply).
    fn ask(&self, port: u16, args: &[&str]) -> String {
        command(port, self.password.as_deref(), args)
    }

    fn ask_node(&self, port: u16, args: &[&str]) -> String {
        command(port, self.password.as_deref(), args)
    }
}

/// Runs one command on `127.0.0.1:port` through `redis::Connection`, rendered as lines
/// (`+OK`, or one line per element of an array, nested arrays flattened).
fn command(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let url = match password {
        Some(pw) => format!("redis://:{}@127.0.0.1:{port}", percent_encode(pw)),
        None => format!("redis://127.0.0.1:{port}"),
    };
    let run = || -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(url.as_str())?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(500))?;
        con.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con)
    };
    match run() {
        Ok(v) => render(&v),
        Err(e) => format!("-ERR {e}"),
    }
}

fn render(v: &redis::Value) -> String {
    use redis::Value;
    match v {
        Value::Okay => "+OK".into(),
        Value::SimpleString(s) => format!("+{s}"),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::Nil => "(nil)".into(),
        Value::Array(items) | Value::Set(items) => {
            // get-master-addr-by-name: host then port on lines 0 and 1.
            items.iter().map(render).collect::<Vec<_>>().join("\n")
        }
        Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| [render(k), render(v)])
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{other:?}"),
    }
}

/// `name` followed by its value on the next line, as a number.
fn field(lines: &str, name: &str) -> Option<u64> {
    let mut it = lines.lines();
    while let Some(l) = it.next() {
        if l == name {
            return it.next()?.trim().parse().ok();
        }
    }
    None
}

fn start_sentinel(master_port: u16, password: Option<&str>) -> Result<Sentinel, TestkitError> {
    let binary = redis_server_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("millrace-sentinel-")
        .tempdir()
        .map_err(|e| TestkitError::io("creating a temporary directory", e))?;
    let reservation = PortReservation::pick()?;
    let port = reservation.port;
    let conf = dir.path().join("sentinel.conf");
    let mut text = format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\nlogfile {log}\n\
         sentinel monitor {SENTINEL_MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} 1000\n\
         sentinel failover-timeout {SENTINEL_MASTER_NAME} 5000\n\
         sentinel parallel-syncs {SENTINEL_MASTER_NAME} 2\n",
        dir = dir.path().display(),
        log = dir.path().join("sentinel.log").display(),
    );
    if let Some(pw) = password {
        text.push_str(&format!(
            "sentinel auth-pass {SENTINEL_MASTER_NAME} {pw}\nrequirepass {pw}\nsentinel sentinel-pass {pw}\n"
        ));
    }
    std::fs::File::create(&conf)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| TestkitError::io("writing sentinel.conf", e))?;
    let child = Command::new(&binary)
        .arg(&conf)
        .arg("--sentinel")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| TestkitError::io(format!("spawning {} --sentinel", binary.display()), e))?;
    let pid = child.id();
    let sentinel = Sentinel {
        port,
        child,
        _reservation: reservation,
        dir,
    };
    let deadline = Instant::now() + crate::DEFAULT_STARTUP_TIMEOUT;
    while !probe(port, password, pid) {
        if Instant::now() >= deadline {
            return Err(TestkitError::Cluster {
                what: format!("sentinel on port {port} did not answer PING"),
                detail: std::fs::read_to_string(sentinel.dir.path().join("sentinel.log"))
                    .unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(sentinel)
}
