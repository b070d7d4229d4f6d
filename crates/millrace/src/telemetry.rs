//! Metrics through the `metrics` facade, with stable names and the labels `stream`, `group`, `consumer`.
//!
//! Names follow the Prometheus conventions: the unit is the last word before `_total`
//! (`_entries`, `_seconds`), durations are in seconds, and every metric is described (`# HELP`
//! and its unit) when a consumer registers it.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `millrace_entries_received_total` | counter | entries read (new, replayed, claimed) |
//! | `millrace_entries_acked_total` | counter | entries acknowledged after handling |
//! | `millrace_entries_failed_total` | counter | entries of failed batches, left pending |
//! | `millrace_entries_claimed_total` | counter | entries claimed from idle consumers |
//! | `millrace_entries_dead_lettered_total` | counter | entries moved to the dead-letter stream |
//! | `millrace_dead_letter_retries_total` | counter | dead-letter moves that failed and wait to be retried (the entry stays pending) |
//! | `millrace_entries_deleted_while_pending_total` | counter | pending entries found deleted/trimmed |
//! | `millrace_entries_redelivered_total` | counter | entries delivered more than once |
//! | `millrace_group_recreated_total` | counter | group or key vanished and was recreated |
//! | `millrace_reconnects_total` | counter | reconnects after transient errors |
//! | `millrace_restarts_total` | counter | consumer restarts by the supervisor |
//! | `millrace_handler_duration_seconds` | histogram | handler time per batch |
//! | `millrace_batch_size_entries` | histogram | entries per handled batch |
//! | `millrace_end_to_end_latency_seconds` | histogram | entry id time → handler start, microsecond resolution |
//! | `millrace_group_pending_entries` | gauge | entries pending in the group (all consumers) |
//! | `millrace_consumer_pending_entries` | gauge | entries pending for this consumer |
//! | `millrace_oldest_pending_idle_seconds` | gauge | idle time of the group's oldest pending entry; 0 when none is pending |
//! | `millrace_group_lag_entries` | gauge | entries not yet delivered to the group (set only when Redis knows) |
//! | `millrace_oldest_undelivered_age_seconds` | gauge | age of the oldest entry not yet delivered to the group; 0 when none |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::id::ConsumerId;

/// Pre-registered metric handles of one consumer (registered once, so the hot path does no lookups).
#[derive(Debug, Clone)]
pub(crate) struct ConsumerMetrics {
    pub(crate) received: Counter,
    pub(crate) acked: Counter,
    pub(crate) failed: Counter,
    pub(crate) claimed: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) dead_letter_retries: Counter,
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
    pub(crate) oldest_undelivered: Gauge,
}

const RECEIVED: &str = "millrace_entries_received_total";
const ACKED: &str = "millrace_entries_acked_total";
const FAILED: &str = "millrace_entries_failed_total";
const CLAIMED: &str = "millrace_entries_claimed_total";
const DEAD_LETTERED: &str = "millrace_entries_dead_lettered_total";
const DEAD_LETTER_RETRIES: &str = "millrace_dead_letter_retries_total";
const DELETED_WHILE_PENDING: &str = "millrace_entries_deleted_while_pending_total";
const REDELIVERED: &str = "millrace_entries_redelivered_total";
const GROUP_RECREATED: &str = "millrace_group_recreated_total";
const RECONNECTS: &str = "millrace_reconnects_total";
const RESTARTS: &str = "millrace_restarts_total";
const HANDLER_DURATION: &str = "millrace_handler_duration_seconds";
const BATCH_SIZE: &str = "millrace_batch_size_entries";
const E2E_LATENCY: &str = "millrace_end_to_end_latency_seconds";
const GROUP_PENDING: &str = "millrace_group_pending_entries";
const CONSUMER_PENDING: &str = "millrace_consumer_pending_entries";
const OLDEST_IDLE: &str = "millrace_oldest_pending_idle_seconds";
const OLDEST_UNDELIVERED: &str = "millrace_oldest_undelivered_age_seconds";
const GROUP_LAG: &str = "millrace_group_lag_entries";

/// Gives every metric its help text and unit in the installed recorder. Describing again is
/// harmless, so each new consumer does it: the recorder may have been installed after the first.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RECEIVED,
        Unit::Count,
        "Entries read: new, replayed and claimed."
    );
    describe_counter!(ACKED, Unit::Count, "Entries acknowledged after handling.");
    describe_counter!(
        FAILED,
        Unit::Count,
        "Entries of failed batches (Err, panic, timeout, left out of Partial), left pending."
    );
    describe_counter!(
        CLAIMED,
        Unit::Count,
        "Entries claimed with XAUTOCLAIM from idle consumers."
    );
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Entries moved to the dead-letter stream."
    );
    describe_counter!(
        DEAD_LETTER_RETRIES,
        Unit::Count,
        "Dead-letter moves that failed and were retried later; the entry stayed pending."
    );
    describe_counter!(
        DELETED_WHILE_PENDING,
        Unit::Count,
        "Pending entries found deleted or trimmed, acknowledged without handling."
    );
    describe_counter!(
        REDELIVERED,
        Unit::Count,
        "Replayed or claimed entries whose delivery count was above 1."
    );
    describe_counter!(
        GROUP_RECREATED,
        Unit::Count,
        "Times the consumer group or the stream vanished and the group was created again."
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Reconnects after transient Redis errors."
    );
    describe_counter!(
        RESTARTS,
        Unit::Count,
        "Consumer restarts by the supervisor."
    );
    describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Time the handler took per batch, decoding included."
    );
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Entries handed to the handler per batch."
    );
    describe_histogram!(
        E2E_LATENCY,
        Unit::Seconds,
        "New batches: time from the oldest entry's id (its XADD time, in milliseconds) to the \
         handler call, measured to the microsecond."
    );
    describe_gauge!(
        GROUP_PENDING,
        Unit::Count,
        "Entries pending in the consumer group, all consumers."
    );
    describe_gauge!(
        CONSUMER_PENDING,
        Unit::Count,
        "Entries pending for this consumer."
    );
    describe_gauge!(
        OLDEST_IDLE,
        Unit::Seconds,
        "Idle time of the group's oldest pending entry; 0 when nothing is pending."
    );
    describe_gauge!(
        GROUP_LAG,
        Unit::Count,
        "Entries not yet delivered to the group; not updated while Redis cannot tell."
    );
    describe_gauge!(
        OLDEST_UNDELIVERED,
        Unit::Seconds,
        "Age of the oldest entry not yet delivered to the group; 0 when none."
    );
}

impl ConsumerMetrics {
    pub(crate) fn new(id: &ConsumerId) -> Self {
        describe();
        let labels = [
            ("stream", id.stream.to_string()),
            ("group", id.group.to_string()),
            ("consumer", id.consumer.to_string()),
        ];
        let group = &labels[..2];
        ConsumerMetrics {
            received: metrics::counter!(RECEIVED, &labels),
            acked: metrics::counter!(ACKED, &labels),
            failed: metrics::counter!(FAILED, &labels),
            claimed: metrics::counter!(CLAIMED, &labels),
            dead_lettered: metrics::counter!(DEAD_LETTERED, &labels),
            dead_letter_retries: metrics::counter!(DEAD_LETTER_RETRIES, &labels),
            deleted_while_pending: metrics::counter!(DELETED_WHILE_PENDING, &labels),
            redelivered: metrics::counter!(REDELIVERED, &labels),
            group_recreated: metrics::counter!(GROUP_RECREATED, &labels),
            reconnects: metrics::counter!(RECONNECTS, &labels),
            restarts: metrics::counter!(RESTARTS, &labels),
            handler_duration: metrics::histogram!(HANDLER_DURATION, &labels),
            batch_size: metrics::histogram!(BATCH_SIZE, &labels),
            e2e_latency: metrics::histogram!(E2E_LATENCY, &labels),
            group_pending: metrics::gauge!(GROUP_PENDING, group),
            consumer_pending: metrics::gauge!(CONSUMER_PENDING, &labels),
            oldest_idle: metrics::gauge!(OLDEST_IDLE, group),
            lag: metrics::gauge!(GROUP_LAG, group),
            oldest_undelivered: metrics::gauge!(OLDEST_UNDELIVERED, group),
        }
    }
}

/// Time from an entry id's milliseconds (the server's clock at `XADD`) to now, to the microsecond.
/// `None` when the id lies in the future (clocks out of step).
pub(crate) fn since_entry_id(id_ms: u64) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    now.checked_sub(Duration::from_millis(id_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_since_an_entry_id_keeps_microseconds() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let id_ms = now.as_millis() as u64 - 5;
        let took = since_entry_id(id_ms).unwrap();
        assert!(took >= Duration::from_millis(5), "{took:?}");
        // Not rounded to whole milliseconds (a whole-millisecond result 1,000 times in a row is
        // practically impossible).
        let fractional = (0..1000).any(|_| {
            !since_entry_id(id_ms)
                .unwrap()
                .subsec_micros()
                .is_multiple_of(1000)
        });
        assert!(fractional);
        assert_eq!(since_entry_id(now.as_millis() as u64 + 60_000), None);
    }

    #[test]
    fn every_metric_is_described_with_a_unit() {
        use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};
        use std::sync::{Arc, Mutex};

        type Seen = Arc<Mutex<Vec<(String, Option<Unit>)>>>;
        #[derive(Default)]
        struct Descriptions(Seen);
        impl Recorder for Descriptions {
            fn describe_counter(&self, k: KeyName, u: Option<Unit>, _: SharedString) {
                self.0.lock().unwrap().push((k.as_str().to_owned(), u));
            }
            fn describe_gauge(&self, k: KeyName, u: Option<Unit>, _: SharedString) {
                self.0.lock().unwrap().push((k.as_str().to_owned(), u));
            }
            fn describe_histogram(&self, k: KeyName, u: Option<Unit>, _: SharedString) {
                self.0.lock().unwrap().push((k.as_str().to_owned(), u));
            }
            fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
                Counter::noop()
            }
            fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
                Gauge::noop()
            }
            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }

        let recorder = Descriptions::default();
        let seen = recorder.0.clone();
        metrics::with_local_recorder(&recorder, || {
            ConsumerMetrics::new(&ConsumerId::new("s", "g", "c"));
        });
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 19, "{seen:?}");
        for (name, unit) in seen {
            let unit = unit.unwrap_or_else(|| panic!("{name} has no unit"));
            let suffix = name.trim_end_matches("_total");
            match unit {
                Unit::Seconds => assert!(suffix.ends_with("_seconds"), "{name}"),
                Unit::Count => assert!(
                    suffix.ends_with("_entries") || name.ends_with("_total"),
                    "{name}"
                ),
                other => panic!("{name}: unexpected unit {other:?}"),
            }
        }
    }
}
