//! Waiting for a cluster to settle after a change.

use std::time::{Duration, Instant};

use crate::cluster::{ClusterNode, RedisCluster, POLL};
use crate::TestkitError;

/// Slot ranges and the id of the master serving each, as one node sees them.
type SlotOwners = Vec<(u16, u16, String)>;

/// Log lines of each node shown when a helper times out.
const LOG_TAIL: usize = 25;

impl RedisCluster {
    /// Every master has the configured number of replicas.
    pub(super) fn check_shape(&self) -> Result<(), String> {
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

    pub(super) fn poll(
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
