//! Typed consumer and supervisor settings: defaults, serde with humantime durations, validation.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::id::ConsumerId;

mod read_size;
mod restart;

pub(crate) use crate::durations::{duration, opt_duration};
pub(crate) use restart::backoff_with_jitter;
pub use restart::RestartPolicy;

/// Where a newly created consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartId {
    /// Only entries added after the group is created (`$`).
    #[default]
    New,
    /// Every entry in the stream (`0`).
    Beginning,
    /// Entries after this id.
    After(EntryId),
}

impl StartId {
    pub(crate) fn as_arg(&self) -> String {
        match self {
            StartId::New => "$".to_owned(),
            StartId::Beginning => "0".to_owned(),
            StartId::After(id) => id.to_string(),
        }
    }
}

impl std::str::FromStr for StartId {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "$" | "new" => Ok(StartId::New),
            "0" | "0-0" | "beginning" => Ok(StartId::Beginning),
            other => {
                other
                    .parse()
                    .map(StartId::After)
                    .map_err(|e: crate::entry::ParseEntryIdError| {
                        format!("{e}; or use `$` (new entries) or `0` (the whole stream)")
                    })
            }
        }
    }
}

impl Serialize for StartId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_arg())
    }
}

impl<'de> Deserialize<'de> for StartId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a consumer does when its group or stream key vanishes (NOGROUP or UNBLOCKED: a `DEL`, an
/// expiry, eviction, a restart without persistence, `XGROUP DESTROY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnGroupLost {
    /// Log an error, count it, recreate the group reading from the start of whatever the stream
    /// holds now (`0`: a recreated key only holds unprocessed entries), and go on.
    #[default]
    Recreate,
    /// Fail the consumer without restarting it.
    Fail,
}

/// Settings of one consumer. Every field has a default; durations are humantime strings in config
/// files (`"30s"`, `"1m 30s"`).
///
/// ```
/// use std::time::Duration;
/// let opts: millrace::ConsumerOptions = toml::from_str(r#"
///     block = "2s"
///     claim_min_idle = "5m"
/// "#).unwrap();
/// assert_eq!(opts.block, Duration::from_secs(2));
/// assert_eq!(opts.claim_interval, Duration::from_secs(30)); // default
/// assert_eq!(opts.count, None); // default: the read size adapts…
/// assert_eq!(opts.batch_target, Duration::from_millis(100)); // …so a batch takes about this
///
/// let fixed: millrace::ConsumerOptions = toml::from_str("count = 100").unwrap();
/// assert_eq!(fixed.count, Some(100));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// Entries per read (`XREADGROUP COUNT`), fixed. Default: unset, so the read size adapts
    /// between `min_count` and `max_count` to make a batch take the handler about `batch_target`
    /// (`"adaptive"` in a file or the environment unsets it). 1 to 100,000; `0` is refused (Redis
    /// reads it as "no limit").
    #[serde(with = "read_size::count")]
    pub count: Option<usize>,
    /// Adaptive read size (`count` unset): how long one batch should take the handler. The
    /// consumer also fetches ahead only as much as fits this time (one batch when a batch takes
    /// longer). Default 100ms; 1ms to 1m.
    #[serde(with = "duration")]
    pub batch_target: Duration,
    /// Adaptive read size: the smallest `COUNT`. Default 1.
    pub min_count: usize,
    /// Adaptive read size: the largest `COUNT`. Default 1000; at most 100,000.
    pub max_count: usize,
    /// How long one read waits for new entries (`BLOCK`). Default 5s; must be between 1ms and 5min.
    /// It bounds how long a stop can wait for a blocked read when `CLIENT UNBLOCK` is not permitted.
    #[serde(with = "duration")]
    pub block: Duration,
    /// Response timeout of the read connection. Default: `block` + 5s. Must exceed `block`, or every
    /// blocked read would time out client-side and strand the entries the server then delivers.
    #[serde(with = "opt_duration")]
    pub read_timeout: Option<Duration>,
    /// How often to run `XAUTOCLAIM` for entries other consumers left pending. Default 30s.
    #[serde(with = "duration")]
    pub claim_interval: Duration,
    /// How long an entry must sit idle before it is claimed from another consumer. Default 60s.
    /// Keep it above your slowest batch: a slower handler gets its entries claimed and handled twice.
    #[serde(with = "duration")]
    pub claim_min_idle: Duration,
    /// Entries claimed per `XAUTOCLAIM` call. Default 100.
    pub claim_count: usize,
    /// At most this many `XAUTOCLAIM` calls per claim tick, so one tick's work stays bounded. Default 10.
    pub claim_calls_per_tick: usize,
    /// Where a newly created group starts: `"$"` (default, new entries only), `"0"` or an id.
    pub start_id: StartId,
    /// Create the group (and the stream) when missing. Default true.
    pub create_group: bool,
    /// What to do when the group or key vanishes while running. Default `recreate`.
    pub on_group_lost: OnGroupLost,
    /// An entry delivered more often than this is moved to the dead-letter stream instead of being
    /// handled again. Counted by Redis's own delivery counter. Default 5.
    pub max_deliveries: u64,
    /// The dead-letter stream. Default `<stream>:dlq` (which keeps the source's hash tag). Every
    /// `{stream}` in it stands for the consumed stream's name (`dead:{stream}`); a multi-stream
    /// consumer requires it, so each stream keeps its own dead-letter stream.
    pub dead_letter_stream: Option<String>,
    /// A batch whose handler runs longer than this counts as failed (nothing acked). Default: none.
    #[serde(with = "opt_duration")]
    pub handler_timeout: Option<Duration>,
    /// How long a graceful stop waits for the in-flight batch before abandoning it (its entries
    /// stay pending and come back). Default 30s.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Longest wait between reconnect attempts while Redis is unreachable. Default 5s.
    #[serde(with = "duration")]
    pub reconnect_backoff_max: Duration,
    /// How often to refresh the pending, lag and oldest-idle gauges (and the same fields of
    /// [`ConsumerHealth`](crate::ConsumerHealth)). Default 10s.
    #[serde(with = "duration")]
    pub gauge_interval: Duration,
    /// Opt-in reaper: on each claim tick, delete consumers of the group that have been idle this long
    /// and hold no pending entries (their entries are claimed first by the normal `XAUTOCLAIM`). The
    /// check and the delete are one atomic script, so a consumer holding entries is never deleted.
    /// Must exceed `claim_min_idle`. Default: off. Needs `+xinfo|consumers +xgroup|delconsumer`.
    #[serde(with = "opt_duration")]
    pub reap_idle_consumers_after: Option<Duration>,
    /// Backoff for entries of a failed batch (`Err`, panic, timeout): they come back after a delay
    /// by their delivery count instead of after `claim_min_idle`. Its longest delay must not exceed
    /// `claim_min_idle`. Default: off. See [`RetryBackoff`](crate::RetryBackoff).
    pub retry_backoff: Option<crate::retry::RetryBackoff>,
    /// Keyed concurrency: handle up to this many sub-batches of a read at once, one per key (see
    /// `key_field`, `key_by`). Entries of one key are handled one sub-batch after another in stream
    /// order; different keys concurrently. At least 1. Default: off (one batch at a time).
    pub key_concurrency: Option<usize>,
    /// Keyed concurrency: the field whose value is an entry's key (entries without it share one
    /// key). Set this or `key_by`.
    pub key_field: Option<String>,
    /// Keyed concurrency: a function giving an entry's key, for keys not found in one field. Code
    /// only (not read from files). Set this or `key_field`.
    #[serde(skip)]
    pub key_by: Option<crate::keyed::KeyFn>,
    /// With the `opentelemetry` feature: besides the `batch` span linked to each entry's producer
    /// span, give each entry that carries a trace context an `entry` span, a child of its
    /// producer's span (same trace id); a batch of one entry runs its handler inside it, so with
    /// `count = 1` every handler call continues its producer's trace. Default false.
    pub trace_entries: bool,
    /// Work-queue streams: acknowledge with `XACKDEL … ACKED`, which also deletes each entry once
    /// every group of the stream has acknowledged it (an entry a group has not been delivered or
    /// still holds pending stays), so the stream does not grow without a trimmer. Needs Redis 8.2
    /// or newer: `start()` asks the server and refuses an older one (Redis 7.x, Valkey 9.1) with
    /// this field's name. Default false (`XACK`; entries stay until trimmed). Needs `+xackdel`.
    pub delete_acked: bool,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            count: None,
            batch_target: Duration::from_millis(100),
            min_count: 1,
            max_count: 1000,
            block: Duration::from_secs(5),
            read_timeout: None,
            claim_interval: Duration::from_secs(30),
            claim_min_idle: Duration::from_secs(60),
            claim_count: 100,
            claim_calls_per_tick: 10,
            start_id: StartId::New,
            create_group: true,
            on_group_lost: OnGroupLost::Recreate,
            max_deliveries: 5,
            dead_letter_stream: None,
            handler_timeout: None,
            shutdown_timeout: Duration::from_secs(30),
            reconnect_backoff_max: Duration::from_secs(5),
            gauge_interval: Duration::from_secs(10),
            reap_idle_consumers_after: None,
            retry_backoff: None,
            key_concurrency: None,
            key_field: None,
            key_by: None,
            trace_entries: false,
            delete_acked: false,
        }
    }
}

/// Margin added to `block` for the default read timeout: servers can answer a BLOCK late under load.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

impl ConsumerOptions {
    /// The read connection's response timeout in effect.
    pub fn effective_read_timeout(&self) -> Duration {
        self.read_timeout
            .unwrap_or(self.block + READ_TIMEOUT_MARGIN)
    }

    /// The largest batch a read can return: `count`, or `max_count` when the size adapts.
    pub(crate) fn largest_count(&self) -> usize {
        self.count.unwrap_or(self.max_count)
    }

    /// Checks every value; the error names the field and what is accepted.
    pub fn validate(&self, consumer: Option<&ConsumerId>) -> Result<()> {
        let err = |field: &str, reason: &str| Err(Error::config(consumer, field, reason));
        if let Err((field, reason)) = read_size::check(self) {
            return err(field, &reason);
        }
        if self.block < Duration::from_millis(1) {
            return err(
                "block",
                "must be at least 1ms (BLOCK 0 waits forever and makes a stop hang)",
            );
        }
        if self.block > Duration::from_secs(300) {
            return err("block", "must be at most 5m");
        }
        if let Some(rt) = self.read_timeout {
            if rt <= self.block {
                return err(
                    "read_timeout",
                    "must be greater than `block` (a read that times out client-side strands the entries the server delivers afterwards); leave it unset for `block` + 5s",
                );
            }
        }
        if self.claim_interval < Duration::from_millis(1) {
            return err("claim_interval", "must be at least 1ms");
        }
        if self.claim_min_idle < Duration::from_millis(1) {
            return err("claim_min_idle", "must be at least 1ms");
        }
        if self.claim_count == 0 {
            return err("claim_count", "must be at least 1");
        }
        if self.claim_calls_per_tick == 0 {
            return err("claim_calls_per_tick", "must be at least 1");
        }
        if self.max_deliveries == 0 {
            return err("max_deliveries", "must be at least 1");
        }
        if let Some(dlq) = &self.dead_letter_stream {
            if dlq.is_empty() {
                return err("dead_letter_stream", "must not be empty");
            }
        }
        if let Some(t) = self.handler_timeout {
            if t.is_zero() {
                return err(
                    "handler_timeout",
                    "must be greater than 0 (leave it unset for no timeout)",
                );
            }
        }
        if let Some(reap) = self.reap_idle_consumers_after {
            if reap <= self.claim_min_idle {
                return err(
                    "reap_idle_consumers_after",
                    "must exceed `claim_min_idle`, so an idle consumer's entries are claimed before it is deleted",
                );
            }
        }
        if let Some(Err((field, reason))) = self
            .retry_backoff
            .as_ref()
            .map(|b| b.check(self.claim_min_idle))
        {
            return err(field, &reason);
        }
        if let Err((field, reason)) = check_keyed(self) {
            return err(field, reason);
        }
        if self.gauge_interval < Duration::from_millis(10) {
            return err("gauge_interval", "must be at least 10ms");
        }
        if self.reconnect_backoff_max < Duration::from_millis(10) {
            return err("reconnect_backoff_max", "must be at least 10ms");
        }
        Ok(())
    }
}

/// Checks the keyed-concurrency options together: the field at fault and why.
fn check_keyed(opts: &ConsumerOptions) -> Result<(), (&'static str, &'static str)> {
    match (opts.key_concurrency, &opts.key_field, &opts.key_by) {
        (Some(0), ..) => Err(("key_concurrency", "must be at least 1 (leave it unset to handle one batch at a time)")),
        (Some(_), None, None) => Err(("key_concurrency", "needs the key: set `key_field` (a field name) or `key_by` (a function)")),
        (_, Some(_), Some(_)) => Err(("key_field", "and `key_by` are both set; set one of them")),
        (None, Some(_), _) | (None, _, Some(_)) => Err(("key_concurrency", "is not set, so the key (`key_field` or `key_by`) would be unused; set it to the number of sub-batches to handle at once")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let o = ConsumerOptions::default();
        assert_eq!(o.count, None, "the read size adapts by default");
        assert_eq!(o.block, Duration::from_secs(5));
        assert_eq!(o.claim_interval, Duration::from_secs(30));
        assert_eq!(o.claim_min_idle, Duration::from_secs(60));
        assert!(o.validate(None).is_ok());
        assert!(o.effective_read_timeout() > o.block);
    }

    #[test]
    fn bad_durations_are_refused_with_the_field_name() {
        for bad in [
            "5",
            "-1s",
            "1e9y",
            "",
            "5 parsecs",
            "999999999999999999999s",
            "1s garbage",
        ] {
            let text = format!("block = \"{bad}\"");
            let err = toml::from_str::<ConsumerOptions>(&text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("block"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<ConsumerOptions>("cont = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cont"), "{err}");
    }

    #[test]
    fn config_round_trips_through_serde() {
        let o = ConsumerOptions {
            read_timeout: Some(Duration::from_millis(7500)),
            ..Default::default()
        };
        let text = toml::to_string(&o).unwrap();
        assert_eq!(toml::from_str::<ConsumerOptions>(&text).unwrap(), o);
    }

    #[test]
    fn backoff_is_monotonic_in_its_cap_and_capped() {
        let p = RestartPolicy::default();
        for attempt in 0..40 {
            let d = p.backoff(attempt);
            assert!(d <= p.backoff_max, "{attempt}: {d:?}");
            let floor = (p.backoff_initial.saturating_mul(1u32 << attempt.min(20)))
                .min(p.backoff_max)
                .mul_f64(0.75);
            assert!(
                d >= floor.saturating_sub(Duration::from_nanos(1)),
                "{attempt}: {d:?}"
            );
        }
    }
}
