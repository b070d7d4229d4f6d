//! Faults on a [`RedisCluster`]: a graceful failover of a master, a master killed and its replica
//! promoted, a node killed and restarted.

use std::time::Instant;

use super::{RedisCluster, MANUAL_FAILOVER_TIMEOUT};

impl RedisCluster {
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
}
