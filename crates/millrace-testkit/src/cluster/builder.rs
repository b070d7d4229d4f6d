//! Starting a cluster: the options, the nodes, `redis-cli --cluster create`.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::{
    ClusterNode, RedisCluster, DEFAULT_NODE_TIMEOUT, DEFAULT_SETTLE_TIMEOUT, POLL, REDIS_CLI_ENV,
};
use crate::server::{is_executable, redis_server_binary, search_path, PortReservation};
use crate::tls::{self, TlsFiles};
use crate::{RedisServer, TestkitError};

/// How many times a node is started on fresh ports when its bus port turns
/// out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// Options for a [`RedisCluster`]; made by [`RedisCluster::builder`].
#[derive(Clone)]
pub struct ClusterBuilder {
    pub(super) masters: usize,
    pub(super) replicas: usize,
    pub(super) node_timeout: Duration,
    pub(super) settle_timeout: Duration,
    pub(super) password: Option<String>,
    pub(super) tls: bool,
    pub(super) users: Vec<(String, Vec<String>)>,
    pub(super) extra_args: Vec<String>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            masters: 3,
            replicas: 1,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            settle_timeout: DEFAULT_SETTLE_TIMEOUT,
            password: None,
            tls: false,
            users: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

impl fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("masters", &self.masters)
            .field("replicas", &self.replicas)
            .field("node_timeout", &self.node_timeout)
            .field("settle_timeout", &self.settle_timeout)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls)
            .field(
                "users",
                &self.users.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("extra_args", &self.extra_args)
            .finish()
    }
}

impl ClusterBuilder {
    /// How many masters share the 16384 slots (default 3; `redis-cli`
    /// refuses fewer than 3).
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// How many replicas each master gets (default 1).
    pub fn replicas_per_master(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// `cluster-node-timeout` (default [`DEFAULT_NODE_TIMEOUT`], 1.5 s). A
    /// killed master's replica is promoted about two of these later.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// How long start-up and every helper wait for the cluster to settle
    /// (default [`DEFAULT_SETTLE_TIMEOUT`], 30 s).
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// Requires clients to authenticate as the default user with this
    /// password (`--requirepass`, and `--masterauth` so replicas can sync).
    /// Node URLs carry it.
    pub fn password(mut self, pw: impl Into<String>) -> Self {
        self.password = Some(pw.into());
        self
    }

    /// Serves TLS only, on clients, replication and the cluster bus alike
    /// (`--tls-cluster yes --tls-replication yes`): every node gets a
    /// certificate for `127.0.0.1` from one throwaway CA
    /// ([`RedisCluster::ca_cert_path`]), node URLs are `rediss://`, and
    /// [`ClusterNode::client`] and [`RedisCluster::client`] trust the CA.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Adds an ACL user on every node, from the start and across restarts
    /// (`--user NAME RULES…`): `rules` as `ACL SETUSER` takes them after the
    /// name, e.g. `["on", ">pw", "~orders*", "+@stream"]`. The kit keeps
    /// using the default user (with the [`password`](Self::password), if
    /// any), so a test can hand the code under test a least-privilege user;
    /// [`RedisCluster::seed_urls_as`] gives its URLs.
    pub fn acl_user<I, S>(mut self, name: impl Into<String>, rules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.users
            .push((name.into(), rules.into_iter().map(Into::into).collect()));
        self
    }

    /// Appends one raw command-line argument for every node, after the
    /// testkit's own.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra_args.push(a.into());
        self
    }

    /// Starts the cluster and waits until it has settled.
    ///
    /// # Panics
    ///
    /// Panics with the reason and the node logs if it cannot start.
    #[track_caller]
    pub fn start(self) -> RedisCluster {
        match self.try_start() {
            Ok(cluster) => cluster,
            Err(e) => panic!("millrace-testkit: cannot start a redis cluster: {e}"),
        }
    }

    /// Starts the cluster and waits until it has settled, returning the
    /// reason (with the `redis-cli` output and the node logs) if it cannot.
    pub fn try_start(self) -> Result<RedisCluster, TestkitError> {
        if self.masters < 3 {
            return Err(TestkitError::Cluster {
                what: format!("cannot create a cluster of {} masters", self.masters),
                detail: "redis-cli --cluster create needs at least 3 masters".into(),
            });
        }
        let cli = redis_cli_binary()?;
        let started = Instant::now();
        let count = self.masters * (1 + self.replicas);
        let tls = if self.tls {
            let dir = tempfile::Builder::new()
                .prefix("millrace-cluster-tls-")
                .tempdir()
                .map_err(|e| TestkitError::io("creating a temporary directory", e))?;
            Some((tls::generate(dir.path())?, dir))
        } else {
            None
        };
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            nodes.push(self.start_node(index, tls.as_ref().map(|(files, _)| files))?);
        }
        let mut cluster = RedisCluster {
            nodes,
            config: self,
            tls,
        };
        cluster.create(&cli)?;
        for node in &mut cluster.nodes {
            node.id = node
                .query(redis::cmd("CLUSTER").arg("MYID"))
                .map_err(|e| cluster_error("CLUSTER MYID", e.to_string(), &[]))?;
        }
        let timeout = cluster.config.settle_timeout;
        cluster.poll("the new cluster to settle", timeout, |c| {
            c.check_settled()?;
            c.check_shape()
        })?;
        tracing::debug!(
            nodes = count,
            elapsed = ?started.elapsed(),
            ports = ?cluster.nodes.iter().map(ClusterNode::port).collect::<Vec<_>>(),
            "redis cluster started"
        );
        Ok(cluster)
    }

    fn start_node(
        &self,
        index: usize,
        tls: Option<&TlsFiles>,
    ) -> Result<ClusterNode, TestkitError> {
        let mut attempt = 1;
        loop {
            let bus = PortReservation::pick()?;
            let mut builder = RedisServer::builder();
            for a in [
                "--cluster-enabled".to_owned(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-port".into(),
                bus.port.to_string(),
                "--cluster-node-timeout".into(),
                self.node_timeout.as_millis().to_string(),
                // A replica's first sync starts at once instead of after 5 s.
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ] {
                builder = builder.arg(a);
            }
            if let Some(pw) = &self.password {
                builder = builder
                    .password(pw.clone())
                    .arg("--masterauth")
                    .arg(pw.clone());
            }
            if let Some(files) = tls {
                builder = builder
                    .tls_with(files.clone())
                    .arg("--tls-cluster")
                    .arg("yes")
                    .arg("--tls-replication")
                    .arg("yes");
            }
            for (name, rules) in &self.users {
                builder = builder.arg("--user").arg(name.clone());
                for rule in rules {
                    builder = builder.arg(rule.clone());
                }
            }
            for a in &self.extra_args {
                builder = builder.arg(a.clone());
            }
            match builder.try_start() {
                Ok(server) => {
                    return Ok(ClusterNode {
                        index,
                        id: String::new(),
                        server,
                        bus,
                        admin: Mutex::new(None),
                    })
                }
                // The server retries a taken client port itself; a taken bus
                // port needs a fresh reservation.
                Err(TestkitError::PortInUse { .. }) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl RedisCluster {
    pub(super) fn create(&self, cli: &PathBuf) -> Result<(), TestkitError> {
        let mut command = Command::new(cli);
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(node.address());
        }
        command
            .arg("--cluster-replicas")
            .arg(self.config.replicas.to_string())
            .arg("--cluster-yes");
        if let Some(pw) = &self.config.password {
            command.arg("-a").arg(pw).arg("--no-auth-warning");
        }
        if let Some((files, _)) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(&files.ca_cert);
        }
        // Its output goes to a file, so a hung redis-cli ("Waiting for the
        // cluster to join" forever) can be killed and its output still read.
        let log = self.nodes[0].dir().join("redis-cli-create.log");
        let io = |e| TestkitError::io(format!("running {}", cli.display()), e);
        let out = std::fs::File::create(&log).map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io)?;
        let deadline = Instant::now() + self.config.settle_timeout;
        let status = loop {
            match child.try_wait().map_err(io)? {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(POLL),
            }
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let what = match status {
            Some(status) if status.success() && !text.contains("[ERR]") => return Ok(()),
            Some(status) => format!("redis-cli --cluster create failed ({status})"),
            None => format!(
                "redis-cli --cluster create did not finish within {:?}; killed it",
                self.config.settle_timeout
            ),
        };
        Err(cluster_error(&what, text, &self.nodes))
    }
}

fn cluster_error(what: &str, output: String, nodes: &[ClusterNode]) -> TestkitError {
    let mut detail = output;
    for node in nodes {
        detail.push_str(&format!(
            "\n--- node {} ({}) log ---\n{}",
            node.index,
            node.address(),
            node.log()
        ));
    }
    TestkitError::Cluster {
        what: what.to_owned(),
        detail,
    }
}

/// `$MILLRACE_REDIS_CLI`, else the `redis-cli` next to `redis-server`, else
/// the one on `PATH`.
fn redis_cli_binary() -> Result<PathBuf, TestkitError> {
    if let Some(value) = std::env::var_os(REDIS_CLI_ENV) {
        let path = PathBuf::from(&value);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(TestkitError::Cluster {
                what: format!(
                    "{REDIS_CLI_ENV}={} is not an executable file",
                    path.display()
                ),
                detail: String::new(),
            })
        };
    }
    let sibling = redis_server_binary()?.with_file_name("redis-cli");
    if is_executable(&sibling) {
        return Ok(sibling);
    }
    search_path(std::ffi::OsStr::new("redis-cli")).ok_or_else(|| TestkitError::Cluster {
        what: "redis-cli not found".into(),
        detail: format!(
            "not next to redis-server ({}) nor on PATH, and {REDIS_CLI_ENV} is not set; it comes \
             with redis-server (`apt-get install -y redis-server`)",
            sibling.display()
        ),
    })
}
