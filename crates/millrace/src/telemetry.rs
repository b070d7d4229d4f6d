//! Metrics through the `metrics` facade, with stable names and the labels `stream`, `group`, `consumer`.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `millrace_entries_received_total` | counter | entries read (new, replayed, claimed) |
//! | `millrace_entries_acked_total` | counter | entries acknowledged after handling |
//! | `millrace_entries_failed_total` | counter | entries of failed batches, left pending |
//! | `millrace_entries_claimed_total` | counter | entries claimed from idle consumers |
//! | `millrace_entries_dead_lettered_total` | counter | entries moved to the dead-letter stream |
//! | `millrace_entries_deleted_while_pending_total` | counter | pending entries found deleted/trimmed |
//! | `millrace_entries_redelivered_total` | counter | entries delivered more than once |
//! | `millrace_group_recreated_total` | counter | group or key vanished and was recreated |
//! | `millrace_reconnects_total` | counter | reconnects after transient errors |
//! | `millrace_restarts_total` | counter | consumer restarts by the supervisor |
//! | `millrace_handler_duration_seconds` | histogram | handler time per batch |
//! | `millrace_batch_size` | histogram | entries per handled batch |
//! | `millrace_end_to_end_latency_seconds` | histogram | entry id time → handler start |
//! | `millrace_group_pending_entries` | gauge | entries pending in the group (all consumers) |
//! | `millrace_consumer_pending_entries` | gauge | entries pending for this consumer |
//! | `millrace_oldest_pending_idle_seconds` | gauge | idle time of the group's oldest pending entry |
//! | `millrace_group_lag` | gauge | entries not yet delivered to the group (when Redis knows) |

use metrics::{Counter, Gauge, Histogram};

use crate::spec::ConsumerId;

/// Pre-registered metric handles of one consumer (registered once, so the hot path does no lookups).
#[derive(Debug, Clone)]
pub(crate) struct ConsumerMetrics {
    pub(crate) received: Counter,
    pub(crate) acked: Counter,
    pub(crate) failed: Counter,
    pub(crate) claimed: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) deleted_while_pending: Counter,
    pub(crate) redelivered: Counter,
    pub(crate) group_recreated: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) restarts: Counter,
    pub(crate) handler_duration: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) e2e_latency: Histogram,
    pub(crate) group_pending: Gauge,
    pub(crate) consumer_pending: Gauge,
    pub(crate) oldest_idle: Gauge,
    pub(crate) lag: Gauge,
}

impl ConsumerMetrics {
    pub(crate) fn new(id: &ConsumerId) -> Self {
        let labels = [
            ("stream", id.stream.to_string()),
            ("group", id.group.to_string()),
            ("consumer", id.consumer.to_string()),
        ];
        ConsumerMetrics {
            received: metrics::counter!("millrace_entries_received_total", &labels),
            acked: metrics::counter!("millrace_entries_acked_total", &labels),
            failed: metrics::counter!("millrace_entries_failed_total", &labels),
            claimed: metrics::counter!("millrace_entries_claimed_total", &labels),
            dead_lettered: metrics::counter!("millrace_entries_dead_lettered_total", &labels),
            deleted_while_pending: metrics::counter!(
                "millrace_entries_deleted_while_pending_total",
                &labels
            ),
            redelivered: metrics::counter!("millrace_entries_redelivered_total", &labels),
            group_recreated: metrics::counter!("millrace_group_recreated_total", &labels),
            reconnects: metrics::counter!("millrace_reconnects_total", &labels),
            restarts: metrics::counter!("millrace_restarts_total", &labels),
            handler_duration: metrics::histogram!("millrace_handler_duration_seconds", &labels),
            batch_size: metrics::histogram!("millrace_batch_size", &labels),
            e2e_latency: metrics::histogram!("millrace_end_to_end_latency_seconds", &labels),
            group_pending: metrics::gauge!("millrace_group_pending_entries", &labels[..2]),
            consumer_pending: metrics::gauge!("millrace_consumer_pending_entries", &labels),
            oldest_idle: metrics::gauge!("millrace_oldest_pending_idle_seconds", &labels[..2]),
            lag: metrics::gauge!("millrace_group_lag", &labels[..2]),
        }
    }
}
