//! One recorder for what a consumer counts: each event updates the health record
//! ([`crate::health::HealthCell`], read by `Supervisor::health`) and the `metrics` facade together.

use std::sync::Arc;
use std::time::Duration;

use crate::health::{ConsumerState, GroupGauges, HealthCell};
use crate::id::ConsumerId;
use crate::telemetry::ConsumerMetrics;

/// The health record and the metrics handles of one consumer. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    health: Arc<HealthCell>,
    metrics: ConsumerMetrics,
    /// The consumer's entries waiting out a retry delay: kept here, with the other things that
    /// outlive one incarnation of the consumer.
    retries: super::retry::SharedSchedule,
}

impl Stats {
    /// The recorder of consumer `id`, writing into its health record `health`.
    pub(crate) fn new(id: &ConsumerId, health: Arc<HealthCell>) -> Self {
        Stats {
            health,
            metrics: ConsumerMetrics::new(id),
            retries: Default::default(),
        }
    }

    /// The retry schedule of the consumer, shared by its incarnations.
    pub(crate) fn retry_schedule(&self) -> super::retry::SharedSchedule {
        self.retries.clone()
    }

    pub(crate) fn set_state(&self, state: ConsumerState) {
        self.health.set_state(state);
    }

    pub(crate) fn state(&self) -> ConsumerState {
        self.health.state()
    }

    pub(crate) fn set_error(&self, error: String) {
        self.health.set_error(error);
    }

    /// The connection was lost (an outage): health keeps `error` until reading resumes.
    pub(crate) fn set_outage_error(&self, error: String) {
        self.health.set_outage_error(error);
    }

    pub(crate) fn read_ok(&self) {
        self.health.read_ok();
    }

    pub(crate) fn received(&self, n: usize) {
        HealthCell::add(&self.health.received, n);
        self.metrics.received.increment(n as u64);
    }

    pub(crate) fn acked(&self, n: usize) {
        HealthCell::add(&self.health.acked, n);
        self.metrics.acked.increment(n as u64);
    }

    /// Entries a handler failed (`Err`, `Partial`'s rest, timeout, panic), with the reason.
    pub(crate) fn failed(&self, n: usize, reason: &str) {
        HealthCell::add(&self.health.failed, n);
        self.metrics.failed.increment(n as u64);
        self.health.set_error(reason.to_owned());
    }

    pub(crate) fn claimed(&self, n: usize) {
        HealthCell::add(&self.health.claimed, n);
        self.metrics.claimed.increment(n as u64);
    }

    pub(crate) fn dead_lettered(&self) {
        HealthCell::add(&self.health.dead_lettered, 1);
        self.metrics.dead_lettered.increment(1);
    }

    /// A dead-letter move failed and waits to be retried.
    pub(crate) fn dead_letter_retry(&self) {
        HealthCell::add(&self.health.dead_letter_retries, 1);
        self.metrics.dead_letter_retries.increment(1);
    }

    /// Dead-letter moves waiting for their dead-letter stream now.
    pub(crate) fn set_dead_letters_waiting(&self, n: usize) {
        self.health
            .dead_letters_waiting
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn deleted_while_pending(&self, n: usize) {
        HealthCell::add(&self.health.deleted_while_pending, n);
        self.metrics.deleted_while_pending.increment(n as u64);
    }

    pub(crate) fn redelivered(&self, n: usize) {
        HealthCell::add(&self.health.redelivered, n);
        self.metrics.redelivered.increment(n as u64);
    }

    pub(crate) fn group_recreated(&self) {
        HealthCell::add(&self.health.group_recreated, 1);
        self.metrics.group_recreated.increment(1);
    }

    pub(crate) fn reconnecting(&self) {
        self.health.set_state(ConsumerState::Reconnecting);
        HealthCell::add(&self.health.reconnects, 1);
        self.metrics.reconnects.increment(1);
    }

    /// The supervisor restarts the consumer; `in_window` restarts count against the limit now.
    pub(crate) fn restarting(&self, in_window: usize) {
        self.health.set_state(ConsumerState::BackingOff);
        self.health.set_restarts(in_window);
        HealthCell::add(&self.health.restarts_total, 1);
        self.metrics.restarts.increment(1);
    }

    /// One handled batch: how long the handler took and how many entries it was given.
    pub(crate) fn batch_handled(&self, took: Duration, entries: usize) {
        self.metrics.handler_duration.record(took.as_secs_f64());
        self.metrics.batch_size.record(entries as f64);
    }

    /// Time from an entry's id (its XADD time) to its hand-off.
    pub(crate) fn end_to_end(&self, latency: Duration) {
        self.metrics.e2e_latency.record(latency.as_secs_f64());
    }

    pub(crate) fn group_gauges(&self, gauges: GroupGauges) {
        self.metrics.group_pending.set(gauges.group_pending as f64);
        self.metrics
            .consumer_pending
            .set(gauges.consumer_pending as f64);
        self.metrics.oldest_idle.set(
            gauges
                .oldest_pending_idle
                .map_or(0.0, |idle| idle.as_secs_f64()),
        );
        if let Some(lag) = gauges.lag {
            self.metrics.lag.set(lag as f64);
        }
        if let Some(age) = gauges.oldest_undelivered_age {
            self.metrics.oldest_undelivered.set(age.as_secs_f64());
        }
        self.health.set_group(gauges);
    }
}
