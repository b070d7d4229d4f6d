//! Who owns which pending entry: `XAUTOCLAIM` of entries other consumers left idle (the cursor kept
//! across ticks), the ownership step before a batch is handled, the heartbeat of entries being
//! handled, and their release at a stop. Every step that touches ownership checks it atomically, so
//! an entry another consumer has claimed is never taken back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::client::ConsumerClient;
use super::cohort::Cadence;
use super::stats::Stats;
use crate::config::ConsumerOptions;
use crate::entry::EntryId;
use crate::error::Result;
use crate::streams::{self, ReadItem};

/// What one `XAUTOCLAIM` call brought.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) items: Vec<ReadItem>,
    /// Pending ids whose entries were deleted; Redis dropped them from the pending list.
    pub(crate) deleted: Vec<EntryId>,
    /// The scan went round the whole pending list.
    pub(crate) wrapped: bool,
}

#[derive(Debug)]
pub(crate) struct Reclaimer {
    client: ConsumerClient,
    stats: Stats,
    min_idle: Duration,
    cadence: Cadence,
    count: usize,
    calls_per_tick: usize,
    reap_after: Option<Duration>,
    cursor: EntryId,
}

impl Reclaimer {
    pub(crate) fn new(
        client: ConsumerClient,
        stats: Stats,
        opts: &ConsumerOptions,
        cadence: Cadence,
    ) -> Self {
        // Spread the first tick over one interval: hundreds of consumers starting together
        // would otherwise all scan the pending list at once.
        let own_first = Instant::now() + opts.claim_interval.mul_f64(rand::random::<f64>());
        Reclaimer {
            client,
            stats,
            min_idle: opts.claim_min_idle,
            cadence: cadence.first_at(own_first),
            count: opts.claim_count,
            calls_per_tick: opts.claim_calls_per_tick,
            reap_after: opts.reap_idle_consumers_after,
            cursor: EntryId::MIN,
        }
    }

    /// When the next claim tick is due.
    pub(crate) fn next_tick(&self) -> Instant {
        self.cadence.due()
    }

    /// `XAUTOCLAIM` calls one tick may make.
    pub(crate) fn calls_per_tick(&self) -> usize {
        self.calls_per_tick
    }

    /// Starts a tick: schedules the next one, and reaps idle consumers when configured.
    pub(crate) async fn begin_tick(&mut self) -> Result<()> {
        self.cadence.ran(Instant::now());
        let Some(after) = self.reap_after else {
            return Ok(());
        };
        let id = self.client.id().clone();
        let removed = streams::reap_idle_consumers(
            self.client.conn(),
            &id.stream,
            &id.group,
            &id.consumer,
            after,
        )
        .await
        .map_err(|e| {
            self.client
                .error("EVAL (reap idle consumers)", &id.stream, e)
        })?;
        if !removed.is_empty() {
            info!(consumers = ?removed, "reaped idle consumers that held no pending entries");
        }
        Ok(())
    }

    /// One `XAUTOCLAIM` from the kept cursor.
    pub(crate) async fn claim_once(&mut self) -> Result<Claimed> {
        let id = self.client.id().clone();
        let reply = streams::xautoclaim(
            self.client.conn(),
            &id.stream,
            &id.group,
            &id.consumer,
            self.min_idle,
            self.cursor,
            self.count,
        )
        .await
        .map_err(|e| self.client.error("XAUTOCLAIM", &id.stream, e))?;
        if !reply.deleted.is_empty() {
            info!(
                entries = reply.deleted.len(),
                "pending entries were deleted or trimmed; Redis dropped them from the pending list"
            );
            self.stats.deleted_while_pending(reply.deleted.len());
        }
        if !reply.claimed.is_empty() {
            info!(entries = reply.claimed.len(), "claimed idle entries");
            self.stats.claimed(reply.claimed.len());
        }
        self.cursor = reply.next;
        Ok(Claimed {
            items: reply.claimed,
            deleted: reply.deleted,
            wrapped: self.cursor == EntryId::MIN,
        })
    }

    /// Restarts the scan from the start of the pending list (after the group was recreated).
    pub(crate) fn restart_scan(&mut self) {
        self.cursor = EntryId::MIN;
    }

    /// A batch fetched this recently is certainly still ours: no other consumer can have claimed
    /// it (that takes `claim_min_idle`), so it goes to the handler without the ownership step.
    pub(crate) fn is_fresh(&self, age: Duration) -> bool {
        age < self.min_idle / 10
    }

    /// How often entries being handled are refreshed, so no other consumer claims them.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        (self.min_idle / 3).max(Duration::from_millis(1))
    }

    /// The ownership step: of `ids`, those still pending for this consumer get idle time 0 and are
    /// returned with their true delivery counts; the rest (acknowledged, or claimed by another
    /// consumer) are left out and must not be handled.
    pub(crate) async fn take(&self, ids: &[EntryId]) -> Result<HashMap<EntryId, u64>> {
        let owned = self.set_idle(ids, Duration::ZERO).await?;
        Ok(owned.into_iter().collect())
    }

    /// Refreshes the idle time of entries being handled; says so when some were lost meanwhile
    /// (claimed by another consumer after a stall longer than `claim_min_idle`). Best effort.
    pub(crate) async fn heartbeat(&self, ids: &[EntryId]) {
        match self.set_idle(ids, Duration::ZERO).await {
            Ok(owned) if owned.len() < ids.len() => warn!(
                entries = ids.len() - owned.len(),
                "entries being handled are no longer pending for this consumer (acknowledged, or claimed by another consumer after a stall); the handler's work on them may be duplicated"
            ),
            Ok(owned) => debug!(entries = owned.len(), "slow handler: refreshed the batch's idle time"),
            Err(e) => warn!(error = %e, "slow handler: could not refresh the batch's idle time; it may be claimed by another consumer"),
        }
    }

    /// Hands fetched-but-unhandled entries that are still this consumer's to the other consumers at
    /// once: [`crate::reader::release`], over the consumer's retrying connection.
    pub(crate) async fn release(&self, ids: &[EntryId]) {
        crate::reader::release(self.client.id(), ids, |idle| self.set_idle(ids, idle)).await;
    }

    async fn set_idle(&self, ids: &[EntryId], idle: Duration) -> Result<Vec<(EntryId, u64)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id = self.client.id();
        let (stream, group, consumer) = (&*id.stream, &*id.group, &*id.consumer);
        self.client
            .retry("EVALSHA (ownership)", stream, |mut c| async move {
                streams::set_idle_if_owned(&mut c, stream, group, consumer, ids, idle).await
            })
            .await
    }
}
