//! Moving one hash slot live from one master to another, in steps.

use crate::cluster::RedisCluster;

/// How long `MIGRATE` may take per batch, in milliseconds.
const MIGRATE_TIMEOUT_MS: u64 = 5_000;

/// A live migration of one hash slot, started by
/// [`RedisCluster::start_migration`]: the slot is `IMPORTING` on the target
/// and `MIGRATING` on the source.
///
/// While it is open, the source still serves the keys it has and answers
/// `-ASK` for the ones already moved; the target serves moved keys only to a
/// client that sent `ASKING`. [`move_keys`](Self::move_keys) moves keys with
/// `MIGRATE` in batches; [`finish`](Self::finish) assigns the slot to the
/// target on every master (`CLUSTER SETSLOT slot NODE`), after which the
/// source answers `-MOVED`.
#[must_use = "an unfinished migration leaves the slot open (ASK replies) until finish()"]
#[derive(Debug)]
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: usize,
    to: usize,
}

impl<'a> SlotMigration<'a> {
    #[track_caller]
    pub(crate) fn start(cluster: &'a RedisCluster, slot: u16, to: usize) -> Self {
        cluster.assert_master(to);
        let from = cluster.owner_of_slot(slot);
        if from == to {
            panic!("millrace-testkit: node {to} already serves slot {slot}");
        }
        let migration = SlotMigration {
            cluster,
            slot,
            from,
            to,
        };
        let (source_id, target_id) = (cluster.node(from).id(), cluster.node(to).id());
        migration.setslot(to, "IMPORTING", source_id);
        migration.setslot(from, "MIGRATING", target_id);
        tracing::debug!(slot, from, to, "slot migration started");
        migration
    }

    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The index of the source master.
    pub fn from(&self) -> usize {
        self.from
    }

    /// The index of the target master.
    pub fn to(&self) -> usize {
        self.to
    }

    /// How many keys of the slot are still on the source
    /// (`CLUSTER COUNTKEYSINSLOT`).
    ///
    /// # Panics
    ///
    /// Panics if the source does not answer.
    #[track_caller]
    pub fn keys_left(&self) -> usize {
        let cmd = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(self.slot)
            .clone();
        match self.cluster.node(self.from).query(&cmd) {
            Ok(n) => n,
            Err(e) => panic!(
                "millrace-testkit: CLUSTER COUNTKEYSINSLOT on node {}: {e}",
                self.from
            ),
        }
    }

    /// Moves up to `batch` keys (at least one) of the slot from the source
    /// to the target with one `MIGRATE … KEYS`, and returns how many it
    /// moved: 0 once the source has none left. A stream moves whole, with
    /// its consumer groups and their pending entries.
    ///
    /// # Panics
    ///
    /// Panics if `CLUSTER GETKEYSINSLOT` or `MIGRATE` fails.
    #[track_caller]
    pub fn move_keys(&mut self, batch: usize) -> usize {
        let source = self.cluster.node(self.from);
        let keys: Vec<Vec<u8>> = match source.query(
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(self.slot)
                .arg(batch.max(1)),
        ) {
            Ok(keys) => keys,
            Err(e) => panic!(
                "millrace-testkit: CLUSTER GETKEYSINSLOT on node {}: {e}",
                self.from
            ),
        };
        if keys.is_empty() {
            return 0;
        }
        let target = self.cluster.node(self.to);
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(target.port())
            .arg("")
            .arg(0)
            .arg(MIGRATE_TIMEOUT_MS);
        if let Some(pw) = self.cluster.password() {
            migrate.arg("AUTH").arg(pw);
        }
        migrate.arg("KEYS").arg(&keys);
        if let Err(e) = source.query::<redis::Value>(&migrate) {
            panic!(
                "millrace-testkit: MIGRATE of {} keys of slot {} from node {} to node {}: {e}",
                keys.len(),
                self.slot,
                self.from,
                self.to
            );
        }
        tracing::debug!(slot = self.slot, keys = keys.len(), "keys migrated");
        keys.len()
    }

    /// Moves every key of the slot, 100 at a time; returns how many moved.
    ///
    /// # Panics
    ///
    /// As [`move_keys`](Self::move_keys).
    #[track_caller]
    pub fn move_all_keys(&mut self) -> usize {
        let mut moved = 0;
        loop {
            match self.move_keys(100) {
                0 => return moved,
                n => moved += n,
            }
        }
    }

    /// Ends the migration: `CLUSTER SETSLOT slot NODE target` on the
    /// target, then on the source, then on every other master; waits until
    /// the cluster has settled with the target serving the slot.
    ///
    /// # Panics
    ///
    /// Panics if keys of the slot are still on the source (move them
    /// first), if a `SETSLOT` fails, or if the cluster does not settle.
    #[track_caller]
    pub fn finish(self) {
        let left = self.keys_left();
        if left > 0 {
            panic!(
                "millrace-testkit: finish() of slot {} with {left} keys still on node {}",
                self.slot, self.from
            );
        }
        let target_id = self.cluster.node(self.to).id();
        self.setslot(self.to, "NODE", target_id);
        self.setslot(self.from, "NODE", target_id);
        for other in self.cluster.masters() {
            if other != self.to && other != self.from {
                self.setslot(other, "NODE", target_id);
            }
        }
        let (slot, to) = (self.slot, self.to);
        self.cluster
            .wait(&format!("slot {slot} to be served by node {to}"), |c| {
                c.check_settled()?;
                match c.try_owner_of_slot(slot)? {
                    owner if owner == to => Ok(()),
                    owner => Err(format!("slot {slot} is still served by node {owner}")),
                }
            });
        tracing::debug!(slot, from = self.from, to, "slot migration finished");
    }

    #[track_caller]
    fn setslot(&self, on: usize, action: &str, id: &str) {
        let cmd = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(self.slot)
            .arg(action)
            .arg(id)
            .clone();
        if let Err(e) = self.cluster.node(on).query::<()>(&cmd) {
            panic!(
                "millrace-testkit: CLUSTER SETSLOT {} {action} on node {on}: {e}",
                self.slot
            );
        }
    }
}
