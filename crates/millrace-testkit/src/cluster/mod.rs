//! A throwaway Redis Cluster of real `redis-server` processes on loopback.

mod migration;
mod node;
mod view;

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use migration::SlotMigration;
pub use node::ClusterNode;

use tempfile::TempDir;

use crate::server::{is_executable, redis_server_binary, search_path, PortReservation};
use crate::tls::{self, TlsFiles};
use crate::{RedisServer, TestkitError};

/// Environment variable naming the `redis-cli` binary to use instead of the
/// one next to `redis-server` or on `PATH`.
pub const REDIS_CLI_ENV: &str = "MILLRACE_REDIS_CLI";

/// The default `cluster-node-timeout`: how long a node may be unreachable
/// before the others call it failed and its replica takes over.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a helper of [`RedisCluster`] waits, by default, for the cluster
/// to settle after it changed something.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Slot ranges and the id of the master serving each, as one node sees them.
type SlotOwners = Vec<(u16, u16, String)>;

/// How often the cluster is re-checked while a helper waits.
const POLL: Duration = Duration::from_millis(50);

/// How long Redis pursues a `CLUSTER FAILOVER` (its `CLUSTER_MF_TIMEOUT`,
/// 5 s) before giving up, plus a margin.
const MANUAL_FAILOVER_TIMEOUT: Duration = Duration::from_millis(5_500);

/// How many times a node is started on fresh ports when its bus port turns
/// out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// Log lines of each node shown when a helper times out.
const LOG_TAIL: usize = 25;

/// A real Redis Cluster on `127.0.0.1`: by default 3 masters with one replica
/// each, made with `redis-cli --cluster create`, every node in its own
/// temporary directory with persistence off and a short node timeout
/// ([`DEFAULT_NODE_TIMEOUT`]).
///
/// [`start`](Self::start) returns once every node reports
/// `cluster_state:ok`, all agree on which master owns each slot and every
/// replica's link to its master is up. The helpers that change the cluster
/// ([`failover`](Self::failover), [`kill_master`](Self::kill_master),
/// [`restart`](Self::restart), [`migrate_slot`](Self::migrate_slot)) return
/// only once it has settled like that again (without the nodes that are
/// down), so a test can go on at once. Nodes are named by their index in
/// [`nodes`](Self::nodes).
///
/// Dropping it kills every node with `SIGKILL` and removes their directories.
///
/// ```no_run
/// use millrace_testkit::RedisCluster;
///
/// let cluster = RedisCluster::start();
/// let owner = cluster.owner_of_key("orders");
/// let promoted = cluster.failover(owner);
/// assert_eq!(cluster.owner_of_key("orders"), promoted);
/// ```
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    config: ClusterBuilder,
    // Declared after the nodes so that it is removed once they are dead.
    tls: Option<(TlsFiles, TempDir)>,
}

/// Options for a [`RedisCluster`]; made by [`RedisCluster::builder`].
#[derive(Clone)]
pub struct ClusterBuilder {
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    settle_timeout: Duration,
    password: Option<String>,
    tls: bool,
    extra_args: Vec<String>,
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
    /// Starts 3 masters and 3 replicas with the default options; see
    /// [`ClusterBuilder::start`].
    ///
    /// # Panics
    ///
    /// Panics with the reason and the node logs if it cannot start.
    #[track_caller]
    pub fn start() -> RedisCluster {
        ClusterBuilder::default().start()
    }

    /// Options for a cluster: shape, node timeout, password, raw arguments.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Every node, masters and replicas, in start order. Indexes are stable;
    /// roles are not (see [`ClusterNode`]).
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The node at `index`.
    ///
    /// # Panics
    ///
    /// Panics if there is no such node.
    #[track_caller]
    pub fn node(&self, index: usize) -> &ClusterNode {
        match self.nodes.get(index) {
            Some(node) => node,
            None => panic!(
                "millrace-testkit: no cluster node {index} (there are {})",
                self.nodes.len()
            ),
        }
    }

    /// The URLs of every node, to give a cluster client as seeds (any one
    /// that is up is enough).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    /// A redis-rs cluster client seeded with the nodes that are running.
    ///
    /// # Panics
    ///
    /// Panics if redis-rs rejects the URLs.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(ClusterNode::url)
            .collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds);
        if let Some((files, _)) = &self.tls {
            tls::install_crypto_provider();
            let ca = match std::fs::read(&files.ca_cert) {
                Ok(ca) => ca,
                Err(e) => panic!("millrace-testkit: reading {}: {e}", files.ca_cert.display()),
            };
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            });
        }
        match builder.build() {
            Ok(client) => client,
            Err(e) => panic!("millrace-testkit: building a ClusterClient failed: {e}"),
        }
    }

    /// The PEM file of the CA that signed every node's certificate; `None`
    /// without [`ClusterBuilder::tls`].
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|(files, _)| files.ca_cert.clone())
    }

    /// The hash slot of `key`, as the cluster computes it (`CLUSTER KEYSLOT`).
    ///
    /// # Panics
    ///
    /// Panics if no running node answers.
    #[track_caller]
    pub fn keyslot(&self, key: impl AsRef<[u8]>) -> u16 {
        let cmd = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key.as_ref())
            .clone();
        let mut errors = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            match node.query(&cmd) {
                Ok(slot) => return slot,
                Err(e) => errors.push(format!("node {}: {e}", node.index)),
            }
        }
        panic!("millrace-testkit: CLUSTER KEYSLOT failed on every node: {errors:?}")
    }

    /// The index of the running master that serves `slot`, by its own word.
    ///
    /// # Panics
    ///
    /// Panics unless exactly one running master claims the slot (e.g. while
    /// its master is down and no replica took over).
    #[track_caller]
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        match self.try_owner_of_slot(slot) {
            Ok(index) => index,
            Err(why) => panic!("millrace-testkit: owner of slot {slot}: {why}"),
        }
    }

    /// The index of the running master that serves `key`'s slot.
    ///
    /// # Panics
    ///
    /// As [`owner_of_slot`](Self::owner_of_slot).
    #[track_caller]
    pub fn owner_of_key(&self, key: impl AsRef<[u8]>) -> usize {
        self.owner_of_slot(self.keyslot(key))
    }

    /// The indexes of the running nodes that are masters, by their own word.
    pub fn masters(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.own_line().is_ok_and(|l| l.master))
            .map(ClusterNode::index)
            .collect()
    }

    /// The indexes of the running nodes that replicate `master`, by their
    /// own word.
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let id = self.node(master).id.clone();
        self.nodes
            .iter()
            .filter(|n| {
                n.is_running()
                    && n.own_line()
                        .is_ok_and(|l| !l.master && l.master_id.as_deref() == Some(&id))
            })
            .map(ClusterNode::index)
            .collect()
    }

    /// A graceful failover of `master`'s shard: `CLUSTER FAILOVER` on its
    /// first replica, which waits for the master to hand over. Returns the
    /// index of the new master once it serves the slots, the old master
    /// follows it and the cluster has settled.
    ///
    /// # Panics
    ///
    /// Panics if `master` is not a running master with a running replica, or
    /// if the cluster does not settle in time.
    #[track_caller]
    pub fn failover(&self, master: usize) -> usize {
        self.assert_master(master);
        let Some(&replica) = self.replicas_of(master).first() else {
            panic!("millrace-testkit: failover({master}): the master has no running replica")
        };
        let request = || {
            if let Err(e) = self
                .node(replica)
                .query::<()>(redis::cmd("CLUSTER").arg("FAILOVER"))
            {
                panic!("millrace-testkit: CLUSTER FAILOVER on node {replica}: {e}");
            }
            Instant::now()
        };
        let mut requested = request();
        self.wait(
            &format!("node {replica} to take over from node {master}"),
            |c| {
                let new = c.node(replica).own_line()?;
                let old = c.node(master).own_line()?;
                if !new.master || new.slots.is_empty() {
                    // Redis gives a manual failover 5 s, then abandons it
                    // ("Manual failover timed out"); ask again.
                    if requested.elapsed() > MANUAL_FAILOVER_TIMEOUT {
                        tracing::debug!(replica, "manual failover timed out, asking again");
                        requested = request();
                    }
                    return Err(format!("node {replica} is not serving slots yet"));
                }
                if old.master || old.master_id.as_deref() != Some(&c.node(replica).id) {
                    return Err(format!("node {master} does not follow node {replica} yet"));
                }
                c.check_settled()
            },
        );
        replica
    }

    /// Kills `master` with `SIGKILL` and waits until one of its replicas has
    /// been promoted (after about two node timeouts) and the rest of the
    /// cluster has settled. Returns the promoted replica's index. The killed
    /// node stays down until [`restart`](Self::restart).
    ///
    /// # Panics
    ///
    /// Panics if `master` is not a running master with a running replica, or
    /// if no replica is promoted in time.
    #[track_caller]
    pub fn kill_master(&mut self, master: usize) -> usize {
        self.assert_master(master);
        let replicas = self.replicas_of(master);
        if replicas.is_empty() {
            panic!("millrace-testkit: kill_master({master}): the master has no running replica");
        }
        self.kill(master);
        let mut promoted = None;
        self.wait(
            &format!("a replica of killed node {master} to be promoted"),
            |c| {
                promoted = replicas.iter().copied().find(|&r| {
                    c.node(r)
                        .own_line()
                        .is_ok_and(|l| l.master && !l.slots.is_empty())
                });
                if promoted.is_none() {
                    return Err(format!("none of nodes {replicas:?} is serving slots yet"));
                }
                c.check_settled()
            },
        );
        promoted.unwrap_or_else(|| unreachable!("the wait only ends with a promoted replica"))
    }

    /// Kills node `index` with `SIGKILL` and returns at once; the cluster
    /// notices after the node timeout. Does nothing if it is not running.
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.server.kill();
            tracing::debug!(node = index, "cluster node killed");
        }
    }

    /// Starts node `index` again on the same port with the same
    /// `nodes.conf` (a running node is first stopped with `SIGTERM`), and
    /// waits until it has rejoined and the cluster has settled. A master that
    /// was replaced meanwhile comes back as a replica of its successor.
    ///
    /// # Panics
    ///
    /// Panics if the node cannot start or the cluster does not settle in
    /// time.
    #[track_caller]
    pub fn restart(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            panic!("millrace-testkit: restart({index}): no such node");
        };
        node.server.restart();
        self.wait(
            &format!("node {index} to rejoin"),
            RedisCluster::check_settled,
        );
        tracing::debug!(node = index, "cluster node restarted");
    }

    /// Waits until the cluster has settled: every running node reports
    /// `cluster_state:ok`, knows every other running node as connected and
    /// not failing, all agree on which master serves each slot, no slot is
    /// open for migration, and every running replica's link to its master is
    /// up.
    ///
    /// # Panics
    ///
    /// Panics with the last reason and the node logs if it does not settle
    /// within the settle timeout.
    #[track_caller]
    pub fn wait_settled(&self) {
        self.wait("the cluster to settle", RedisCluster::check_settled);
    }

    /// Moves `slot` with its keys to master `to`, live; see
    /// [`start_migration`](Self::start_migration) for the steps.
    ///
    /// # Panics
    ///
    /// As [`start_migration`](Self::start_migration) and
    /// [`SlotMigration::finish`].
    #[track_caller]
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        let mut migration = self.start_migration(slot, to);
        migration.move_all_keys();
        migration.finish();
    }

    /// Starts moving `slot` from its master to master `to`: `CLUSTER SETSLOT
    /// slot IMPORTING` on `to`, then `MIGRATING` on the source. From here on
    /// the source answers `-ASK` for keys of the slot it no longer has. The
    /// returned [`SlotMigration`] moves the keys in steps and finishes, so a
    /// test can act while the slot is half-way.
    ///
    /// # Panics
    ///
    /// Panics if `to` is not a running master, already serves the slot, or
    /// a `SETSLOT` fails.
    #[track_caller]
    pub fn start_migration(&self, slot: u16, to: usize) -> SlotMigration<'_> {
        SlotMigration::start(self, slot, to)
    }

    /// Every node's log, each under a header: what to print when a test
    /// fails in a way the helpers did not catch.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "--- node {} ({}) log ---\n{}\n",
                node.index,
                node.address(),
                node.log()
            ));
        }
        out
    }

    /// The password set with [`ClusterBuilder::password`], if any.
    pub fn password(&self) -> Option<&str> {
        self.config.password.as_deref()
    }

    fn try_owner_of_slot(&self, slot: u16) -> Result<usize, String> {
        let mut owners = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let line = node.own_line()?;
            if line.master && line.serves(slot) {
                owners.push(node.index);
            }
        }
        match owners.as_slice() {
            [one] => Ok(*one),
            [] => Err("no running master serves it".into()),
            many => Err(format!("nodes {many:?} all claim it")),
        }
    }

    #[track_caller]
    pub(crate) fn assert_master(&self, index: usize) {
        match self.node(index).own_line() {
            Ok(line) if line.master && self.node(index).is_running() => {}
            Ok(_) => panic!("millrace-testkit: node {index} is not a master"),
            Err(e) => panic!("millrace-testkit: node {index}: {e}"),
        }
    }

    fn create(&self, cli: &PathBuf) -> Result<(), TestkitError> {
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

    /// Every master has the configured number of replicas.
    fn check_shape(&self) -> Result<(), String> {
        let masters = self.masters();
        if masters.len() != self.config.masters {
            return Err(format!(
                "{} masters ({masters:?}), want {}",
                masters.len(),
                self.config.masters
            ));
        }
        for m in masters {
            let replicas = self.replicas_of(m);
            if replicas.len() != self.config.replicas {
                return Err(format!("master {m} has replicas {replicas:?}"));
            }
        }
        Ok(())
    }

    pub(crate) fn check_settled(&self) -> Result<(), String> {
        let running: Vec<&ClusterNode> = self.nodes.iter().filter(|n| n.is_running()).collect();
        // What each running node says it is: master, or replica of whom.
        let mut roles = Vec::with_capacity(running.len());
        for node in &running {
            let own = node.own_line()?;
            roles.push((own.master, own.master_id));
        }
        let mut reference: Option<(usize, SlotOwners)> = None;
        for node in &running {
            let state = node.cluster_state()?;
            if state != "ok" {
                return Err(format!("node {} says cluster_state:{state}", node.index));
            }
            let view = node.view()?;
            for (other, role) in running.iter().zip(&roles) {
                let Some(line) = view.iter().find(|l| l.id == other.id) else {
                    return Err(format!(
                        "node {} does not know node {}",
                        node.index, other.index
                    ));
                };
                if line.failing || line.joining || !line.connected {
                    return Err(format!(
                        "node {} sees node {} as failing, joining or disconnected",
                        node.index, other.index
                    ));
                }
                // A master ignores a manual failover request from a node it
                // does not know as its replica yet.
                if (line.master, &line.master_id) != (role.0, &role.1) {
                    return Err(format!(
                        "node {} does not know node {}'s role yet",
                        node.index, other.index
                    ));
                }
                if line.open_slots {
                    return Err(format!(
                        "node {} has a slot open for migration",
                        other.index
                    ));
                }
            }
            let mut owners: SlotOwners = view
                .iter()
                .filter(|l| l.master && !l.failing)
                .flat_map(|l| l.slots.iter().map(|&(lo, hi)| (lo, hi, l.id.clone())))
                .collect();
            owners.sort();
            match &reference {
                None => reference = Some((node.index, owners)),
                Some((first, expected)) if *expected != owners => {
                    return Err(format!(
                        "nodes {first} and {} disagree about who serves which slots",
                        node.index
                    ));
                }
                Some(_) => {}
            }
            let own = view
                .iter()
                .find(|l| l.myself)
                .ok_or_else(|| format!("node {}: no `myself` line", node.index))?;
            if !own.master {
                let link = node.info_field("replication", "master_link_status")?;
                if link != "up" {
                    return Err(format!(
                        "replica {} has master_link_status:{link}",
                        node.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// Polls `check` until it succeeds, panicking with its last reason and
    /// the tails of the node logs after the settle timeout.
    #[track_caller]
    pub(crate) fn wait(&self, what: &str, check: impl FnMut(&Self) -> Result<(), String>) {
        if let Err(e) = self.poll(what, self.config.settle_timeout, check) {
            panic!("millrace-testkit: {e}");
        }
    }

    fn poll(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<(), String>,
    ) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            let why = match check(self) {
                Ok(()) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "waited for {what}");
                    return Ok(());
                }
                Err(why) => why,
            };
            if started.elapsed() >= timeout {
                let mut detail = format!("last check: {why}\n");
                for node in &self.nodes {
                    detail.push_str(&format!(
                        "--- node {} ({}, {}) log tail ---\n{}\n",
                        node.index,
                        node.address(),
                        if node.is_running() { "running" } else { "down" },
                        node.log_tail(LOG_TAIL)
                    ));
                }
                return Err(TestkitError::Cluster {
                    what: format!("timed out after {timeout:?} waiting for {what}"),
                    detail,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .field("config", &self.config)
            .finish()
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
