//! A throwaway Redis Cluster of real `redis-server` processes on loopback:
//! `builder` starts one, `settle` waits for it to settle after a change,
//! `migration` moves a slot in steps, `node` is one process and `view` reads
//! what a node says about the cluster (`CLUSTER NODES`), `faults` fails over, kills and restarts
//! nodes.

mod builder;
mod faults;
mod migration;
mod node;
mod settle;
mod view;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use builder::ClusterBuilder;
pub use migration::SlotMigration;
pub use node::ClusterNode;

use tempfile::TempDir;

use crate::server::percent_encode;
use crate::tls::{self, TlsFiles};

/// Environment variable naming the `redis-cli` binary to use instead of the
/// one next to `redis-server` or on `PATH`.
pub const REDIS_CLI_ENV: &str = "MILLRACE_REDIS_CLI";

/// The default `cluster-node-timeout`: how long a node may be unreachable
/// before the others call it failed and its replica takes over.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a helper of [`RedisCluster`] waits, by default, for the cluster
/// to settle after it changed something.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the cluster is re-checked while a helper waits.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// How long Redis pursues a `CLUSTER FAILOVER` (its `CLUSTER_MF_TIMEOUT`,
/// 5 s) before giving up, plus a margin.
const MANUAL_FAILOVER_TIMEOUT: Duration = Duration::from_millis(5_500);

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

    /// [`seed_urls`](Self::seed_urls) with the credentials of an ACL user
    /// (see [`ClusterBuilder::acl_user`]):
    /// `redis://USER:PASSWORD@127.0.0.1:PORT` (`rediss://` with TLS), both
    /// percent-encoded.
    pub fn seed_urls_as(&self, user: &str, password: &str) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let (user, password) = (percent_encode(user), percent_encode(password));
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://{user}:{password}@127.0.0.1:{}", n.port()))
            .collect()
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
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RedisCluster>();
        check::<ClusterNode>();
        check::<ClusterBuilder>();
        check::<SlotMigration<'static>>();
    }
}
