//! One batch from read to ack plan: entries that cannot be handled are settled, ownership is taken
//! when the batch is not fresh, the handler runs under a heartbeat, and its report is applied
//! (dead letters, failures remembered); the ids to acknowledge go back to the caller.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::{debug, info, warn, Instrument};

use super::outcome::{self, AckPlan, DeadLetterOrder};
use super::Consumer;
use crate::entry::DeliveredEntry;
use crate::entry::{EntryId, RawEntry, Source};
use crate::error::{Error, Result};
use crate::handler::RunReport;
use crate::streams::ReadItem;

/// What handling a batch left to do.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    /// Ids to acknowledge.
    pub(crate) ack: Vec<EntryId>,
    /// How long the handler ran, when it ran.
    pub(crate) handler_took: Option<Duration>,
    /// Entries handed to the handler.
    pub(crate) handed: usize,
}

impl Consumer {
    /// Handles one read's items. `sent_after` is, for new batches, the earliest moment their read
    /// can have been sent: it bounds how long the entries have been pending.
    pub(super) async fn handle(
        &mut self,
        items: Vec<ReadItem>,
        source: Source,
        sent_after: Option<Instant>,
    ) -> Result<Handled> {
        let mut sorted = outcome::sort(items);
        // Entries whose dead-letter move waits are never handed to the handler again.
        self.dead_letters.drop_parked(&mut sorted.live);
        for reason in sorted.unidentified {
            warn!(%reason, "skipped a reply element without an id");
        }
        self.settle_tombstones(sorted.tombstones).await?;
        for (id, reason) in sorted.malformed {
            let reason = format!("malformed entry: {reason}");
            self.dead_letter(DeadLetterOrder {
                id,
                entry: None,
                deliveries: None,
                reason,
            })
            .await?;
        }
        if sorted.live.is_empty() {
            return Ok(Handled::default());
        }
        // A replay reads every pending entry of this consumer, those waiting out a retry delay too.
        let live = if source == Source::Replay {
            self.hold_back(sorted.live).await?
        } else {
            sorted.live
        };
        if live.is_empty() {
            return Ok(Handled::default());
        }
        self.stats.received(live.len());
        // A new batch fetched moments ago is certainly ours, with one delivery. Anything older
        // (read ahead behind a slow batch, replayed, claimed) is taken first: what another
        // consumer claimed meanwhile is skipped, and delivery counts come from Redis.
        let age = sent_after.map_or(Duration::MAX, |t| t.elapsed());
        let (batch, idle) = if source == Source::New && self.reclaimer.is_fresh(age) {
            let batch = live.into_iter().map(|e| (e, Some(1))).collect();
            (batch, age)
        } else {
            (self.take_ownership(live).await?, Duration::ZERO)
        };
        if batch.is_empty() {
            return Ok(Handled::default());
        }
        if source == Source::New {
            self.record_latency(&batch);
        }
        self.run_batch(batch, source, idle).await
    }

    /// Runs the handler on entries this consumer owns, and applies its report. `idle` is how long
    /// the entries have been pending already.
    pub(super) async fn run_batch(
        &mut self,
        batch: Vec<DeliveredEntry>,
        source: Source,
        idle: Duration,
    ) -> Result<Handled> {
        // Delivery counts for the rare lookups of the ack plan (entries the handler dead-letters or
        // delays), kept as a list in batch order: the hot path builds no map per batch.
        let ids: Vec<EntryId> = batch.iter().map(|(e, _)| e.id).collect();
        let counts: Vec<Option<u64>> = batch.iter().map(|(_, d)| *d).collect();
        if source != Source::New {
            // Handed over by another path (a claim, a replay) before its retry was due.
            self.retries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(ids.iter().copied());
        }
        if let Some(lanes) = self.opts.key_concurrency {
            return self.run_keyed(batch, source, idle, lanes).await;
        }
        let started = Instant::now();
        let report = self.run_handler(batch, source, &ids, idle).await;
        let took = started.elapsed();
        let plan = outcome::plan_with(
            report,
            |id| ids.iter().position(|x| *x == id).and_then(|i| counts[i]),
            self.opts.retry_backoff.as_ref(),
        );
        let mut handled = self.apply(plan, took).await?;
        handled.handed = ids.len();
        Ok(handled)
    }

    /// Tombstones (pending ids whose entry was deleted or trimmed) are acknowledged at once.
    async fn settle_tombstones(&mut self, tombstones: Vec<EntryId>) -> Result<()> {
        if tombstones.is_empty() {
            return Ok(());
        }
        info!(
            entries = tombstones.len(),
            "pending entries were deleted or trimmed; acknowledging them"
        );
        self.stats.deleted_while_pending(tombstones.len());
        self.failures.forget(&tombstones);
        self.acker.ack(tombstones).await
    }

    /// The ownership step for a batch that is not fresh: keeps the entries still pending for this
    /// consumer (their idle time reset), with their true delivery counts; dead-letters those past
    /// `max_deliveries`.
    async fn take_ownership(&mut self, live: Vec<RawEntry>) -> Result<Vec<DeliveredEntry>> {
        let ids: Vec<EntryId> = live.iter().map(|e| e.id).collect();
        let owned = self.reclaimer.take(&ids).await?;
        if owned.len() < ids.len() {
            info!(entries = ids.len() - owned.len(), "entries no longer pending for this consumer (acknowledged, or claimed by another consumer); skipped");
        }
        let mut entries = Vec::with_capacity(owned.len());
        for e in live {
            match owned.get(&e.id) {
                Some(&deliveries) => entries.push((e, deliveries)),
                None => {
                    debug!(entry_id = %e.id, "entry no longer pending for this consumer; skipped")
                }
            }
        }
        self.screen_poison(entries).await
    }

    /// Dead-letters the entries past `max_deliveries`; returns the others, ready to handle.
    pub(super) async fn screen_poison(
        &mut self,
        entries: Vec<(RawEntry, u64)>,
    ) -> Result<Vec<DeliveredEntry>> {
        let max = self.opts.max_deliveries;
        let mut batch = Vec::with_capacity(entries.len());
        let mut redelivered = 0;
        for (e, deliveries) in entries {
            if outcome::is_poison(deliveries, max) {
                let reason = outcome::poison_reason(deliveries, max, self.failures.last(e.id));
                let order = DeadLetterOrder {
                    id: e.id,
                    entry: Some(e),
                    deliveries: Some(deliveries),
                    reason,
                };
                self.dead_letter(order).await?;
                continue;
            }
            if deliveries > 1 {
                redelivered += 1;
            }
            batch.push((e, Some(deliveries)));
        }
        self.stats.redelivered(redelivered);
        Ok(batch)
    }

    /// End-to-end latency of a new batch: from its oldest entry's id (the XADD time) to now.
    fn record_latency(&self, batch: &[DeliveredEntry]) {
        let Some((oldest, _)) = batch.first() else {
            return;
        };
        if let Some(latency) = crate::telemetry::since_entry_id(oldest.id.ms) {
            self.stats.end_to_end(latency);
        }
    }

    /// Runs the handler in a `batch` span; `idle` is how long the entries have been pending already
    /// (it brings the first heartbeat forward).
    async fn run_handler(
        &mut self,
        batch: Vec<DeliveredEntry>,
        source: Source,
        ids: &[EntryId],
        idle: Duration,
    ) -> RunReport {
        // One span per batch, inside the consumer span; its fields are part of the API.
        let span = tracing::info_span!(
            "batch",
            %source,
            entries = ids.len(),
            entry_id = %ids.first().copied().unwrap_or_default(),
            deliveries = batch.first().and_then(|(_, d)| *d),
        );
        // Trace context: links to the entries' producer spans (see crate::trace).
        let span = crate::trace::batch_span(span, &batch, self.opts.trace_entries);
        let runner = self.runner.clone();
        let run = runner
            .run(self.meta.clone(), source, batch, self.opts.handler_timeout)
            .instrument(span)
            .boxed();
        let started = Instant::now();
        let report = self.with_heartbeat(run, ids, idle).await;
        self.stats
            .batch_handled(started.elapsed(), report.handed.len());
        report
    }

    /// Awaits the handler; while it runs, refreshes the batch's idle time every third of
    /// `claim_min_idle` (counted from when the entries were fetched), for the entries this consumer
    /// still owns, so other consumers do not claim entries that are being worked on.
    /// `claim_min_idle` then means "gone", not "slow".
    pub(super) async fn with_heartbeat<T>(
        &self,
        mut run: BoxFuture<'_, T>,
        ids: &[EntryId],
        idle: Duration,
    ) -> T {
        let every = self.reclaimer.heartbeat_every();
        let mut next = tokio::time::Instant::now() + every.saturating_sub(idle);
        loop {
            tokio::select! {
                out = &mut run => return out,
                _ = tokio::time::sleep_until(next) => {
                    next += every;
                    self.reclaimer.heartbeat(ids).await;
                }
            }
        }
    }

    /// Applies an ack plan's dead letters, delays and failures; returns what to acknowledge, or
    /// the error that restarts the consumer after a panic.
    async fn apply(&mut self, plan: AckPlan, took: Duration) -> Result<Handled> {
        match self.settle(plan, took).await? {
            (_, Some(message)) => Err(self.panicked(message)),
            (handled, None) => Ok(handled),
        }
    }

    /// The error that restarts the consumer after a handler panicked.
    pub(super) fn panicked(&self, message: String) -> Error {
        Error::HandlerPanicked {
            consumer: self.id.clone(),
            message,
        }
    }

    /// Applies an ack plan's dead letters, delays and failures; returns what to acknowledge, and
    /// the panic message when the handler panicked.
    pub(super) async fn settle(
        &mut self,
        mut plan: AckPlan,
        took: Duration,
    ) -> Result<(Handled, Option<String>)> {
        let returned_at = Instant::now();
        for id in &plan.foreign {
            warn!(entry_id = %id, "handler named an id that is not in its batch (in Partial, dead_letter or retry_after); ignored");
        }
        for order in plan.dead_letter {
            self.dead_letter(order).await?;
        }
        let delayed = plan.retry.len();
        self.delay(std::mem::take(&mut plan.retry), returned_at)
            .await?;
        if let (Some(reason), false) = (&plan.failure, plan.left_pending.is_empty()) {
            self.stats.failed(plan.left_pending.len(), reason);
            self.failures.note(&plan.left_pending, reason);
            if plan.handler_failed {
                if let Some(held_back) = self.failure_warnings.allow() {
                    warn!(entries = plan.left_pending.len(), %reason, held_back, delayed, "handler failed a batch; its entries stay pending and come back (after the retry backoff, when set)");
                }
            } else {
                debug!(entries = plan.left_pending.len(), %reason, "batch entries left pending");
            }
        }
        self.failures.forget(&plan.ack);
        let handled = Handled {
            ack: plan.ack,
            handler_took: plan.handler_ran.then_some(took),
            handed: 0,
        };
        Ok((handled, plan.panicked))
    }

    /// Moves one entry to the dead-letter stream (which acknowledges it); a move that fails is
    /// parked and retried in the background, its entry left pending (see `consumer::parked`).
    pub(super) async fn dead_letter(&mut self, order: DeadLetterOrder) -> Result<()> {
        self.failures.forget(&[order.id]);
        self.dead_letters
            .dead_letter(order.id, order.entry, order.deliveries, order.reason)
            .await;
        Ok(())
    }
}
