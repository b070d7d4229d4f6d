//! The supervisor's health as Prometheus text ([`Supervisor::render_metrics`], served by the
//! built-in `/metrics`), labelled by stream or by stream set ([`MetricsLabels`]) so that a
//! thousand tenants do not make forty thousand series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::{Supervisor, SupervisorBuilder};
use crate::health::{ConsumerHealth, ConsumerState};

/// How [`Supervisor::render_metrics`] labels its series.
///
/// Each label set carries 19 series. Measured `/metrics` lines (series plus `# HELP` and `# TYPE`)
/// with one multi-stream consumer over 1,000 streams: `StreamSets` 60, `TopStreams(20)` 440,
/// `Streams` 19,041 (`tests/e2e/http.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MetricsLabels {
    /// One label set per consumer (`stream`, `group`, `consumer`): 19 series per stream.
    Streams,
    /// The default. A consumer of its own keeps its `stream`, `group`, `consumer` labels; the
    /// streams of a multi-stream consumer are summed into one label set (`stream_set` = its
    /// pattern, or `named`, with `group` and `consumer`), gauges of time taking the largest: 19
    /// series per multi-stream consumer whatever its number of streams.
    #[default]
    StreamSets,
    /// Like `StreamSets`, but the `n` streams of each multi-stream consumer with the largest lag
    /// (then pending count) keep series of their own, and the rest are summed.
    TopStreams(usize),
}

impl SupervisorBuilder {
    /// How [`Supervisor::render_metrics`] (and the built-in `/metrics`) label series; default
    /// [`MetricsLabels::StreamSets`].
    ///
    /// ```
    /// let builder = millrace::Supervisor::builder().metrics_labels(millrace::MetricsLabels::TopStreams(20));
    /// # drop(builder);
    /// ```
    pub fn metrics_labels(mut self, labels: MetricsLabels) -> Self {
        self.metrics_labels = labels;
        self
    }
}

/// The figures of one label set.
#[derive(Debug, Default, Clone)]
struct Figures {
    counters: [u64; 11],
    group_pending: u64,
    consumer_pending: u64,
    lag: u64,
    oldest_pending_idle: Duration,
    oldest_undelivered_age: Duration,
    dead_letters_waiting: u64,
    running: u64,
    streams: u64,
}

const COUNTERS: [(&str, &str); 11] = [
    (
        "millrace_entries_received_total",
        "Entries read (new, replayed, claimed).",
    ),
    (
        "millrace_entries_acked_total",
        "Entries acknowledged after handling.",
    ),
    (
        "millrace_entries_failed_total",
        "Entries of failed batches, left pending.",
    ),
    (
        "millrace_entries_dead_lettered_total",
        "Entries moved to the dead-letter stream.",
    ),
    (
        "millrace_entries_claimed_total",
        "Entries claimed from idle consumers.",
    ),
    (
        "millrace_entries_deleted_while_pending_total",
        "Pending entries found deleted or trimmed.",
    ),
    (
        "millrace_entries_redelivered_total",
        "Entries delivered more than once.",
    ),
    (
        "millrace_group_recreated_total",
        "Times the group or key vanished and was recreated.",
    ),
    (
        "millrace_reconnects_total",
        "Reconnects after transient errors.",
    ),
    (
        "millrace_restarts_total",
        "Consumer restarts by the supervisor.",
    ),
    (
        "millrace_dead_letter_retries_total",
        "Dead-letter moves that failed and were retried.",
    ),
];

const GAUGES: [(&str, &str); 7] = [
    (
        "millrace_group_pending_entries",
        "Entries pending in the group, all consumers.",
    ),
    (
        "millrace_consumer_pending_entries",
        "Entries pending for this consumer.",
    ),
    (
        "millrace_group_lag_entries",
        "Entries not yet delivered to the group.",
    ),
    (
        "millrace_oldest_pending_idle_seconds",
        "Idle time of the group's oldest pending entry; 0 when none.",
    ),
    (
        "millrace_oldest_undelivered_age_seconds",
        "Age of the oldest entry not yet delivered to the group; 0 when none.",
    ),
    (
        "millrace_dead_letters_waiting_entries",
        "Dead-letter moves waiting for their dead-letter stream.",
    ),
    (
        "millrace_consumers_running",
        "Consumers reading now (of millrace_streams).",
    ),
];

impl Figures {
    fn add(&mut self, h: &ConsumerHealth) {
        let c = &h.counters;
        let values = [
            c.received,
            c.acked,
            c.failed,
            c.dead_lettered,
            c.claimed,
            c.deleted_while_pending,
            c.redelivered,
            c.group_recreated,
            c.reconnects,
            h.restarts_total,
            c.dead_letter_retries,
        ];
        for (sum, v) in self.counters.iter_mut().zip(values) {
            *sum += v;
        }
        if let Some(g) = &h.group {
            self.group_pending += g.group_pending;
            self.consumer_pending += g.consumer_pending;
            self.lag += g.lag.unwrap_or(0);
            self.oldest_pending_idle = self
                .oldest_pending_idle
                .max(g.oldest_pending_idle.unwrap_or_default());
            self.oldest_undelivered_age = self
                .oldest_undelivered_age
                .max(g.oldest_undelivered_age.unwrap_or_default());
        }
        self.dead_letters_waiting += h.dead_letters_waiting;
        self.running += u64::from(h.state == ConsumerState::Running);
        self.streams += 1;
    }

    fn gauges(&self) -> [String; 7] {
        [
            self.group_pending.to_string(),
            self.consumer_pending.to_string(),
            self.lag.to_string(),
            self.oldest_pending_idle.as_secs_f64().to_string(),
            self.oldest_undelivered_age.as_secs_f64().to_string(),
            self.dead_letters_waiting.to_string(),
            self.running.to_string(),
        ]
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Supervisor {
    /// Every consumer's counters and gauges (from [`health`](Self::health), no Redis call) in the
    /// Prometheus text format, labelled as [`SupervisorBuilder::metrics_labels`] says. Served by
    /// the built-in `/metrics` (feature `http`); usable with any HTTP server. Histograms
    /// (handler time, end-to-end latency) go through the `metrics` facade only.
    ///
    /// ```no_run
    /// # fn demo(app: &millrace::Supervisor) {
    /// let text = app.render_metrics();
    /// assert!(text.contains("# TYPE millrace_entries_acked_total counter"));
    /// # }
    /// ```
    pub fn render_metrics(&self) -> String {
        let health = self.health();
        let sets = self.shared.multi().sets();
        // Which label set each consumer goes to.
        let mut member: BTreeMap<(String, String, String), String> = BTreeMap::new();
        let by_id: BTreeMap<_, _> = health.iter().map(|h| (h.id.clone(), h)).collect();
        for set in &sets {
            let name = set.pattern.clone().unwrap_or_else(|| "named".to_owned());
            let own: std::collections::HashSet<String> = match self.metrics_labels {
                MetricsLabels::Streams => set.streams.iter().cloned().collect(),
                MetricsLabels::StreamSets => Default::default(),
                MetricsLabels::TopStreams(n) => {
                    let mut ranked: Vec<(u64, u64, &String)> = set
                        .streams
                        .iter()
                        .map(|s| {
                            let id =
                                crate::ConsumerId::new(s.as_str(), &*set.group, &*set.consumer);
                            let g = by_id.get(&id).and_then(|h| h.group.as_ref());
                            (
                                g.and_then(|g| g.lag).unwrap_or(0),
                                g.map_or(0, |g| g.group_pending),
                                s,
                            )
                        })
                        .collect();
                    ranked.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then(a.2.cmp(b.2)));
                    ranked
                        .into_iter()
                        .take(n)
                        .map(|(_, _, s)| s.clone())
                        .collect()
                }
            };
            for stream in &set.streams {
                if !own.contains(stream) {
                    member.insert(
                        (stream.clone(), set.group.clone(), set.consumer.clone()),
                        name.clone(),
                    );
                }
            }
        }
        let mut groups: BTreeMap<String, Figures> = BTreeMap::new();
        for h in &health {
            let key = (
                h.id.stream.to_string(),
                h.id.group.to_string(),
                h.id.consumer.to_string(),
            );
            let labels = match member.get(&key) {
                Some(set) => format!(
                    "stream_set=\"{}\",group=\"{}\",consumer=\"{}\"",
                    escape(set),
                    escape(&key.1),
                    escape(&key.2)
                ),
                None => format!(
                    "stream=\"{}\",group=\"{}\",consumer=\"{}\"",
                    escape(&key.0),
                    escape(&key.1),
                    escape(&key.2)
                ),
            };
            groups.entry(labels).or_default().add(h);
        }
        let mut out = String::new();
        for (i, (name, help)) in COUNTERS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, f) in &groups {
                let _ = writeln!(out, "{name}{{{labels}}} {}", f.counters[i]);
            }
        }
        let gauges: Vec<(&String, [String; 7], u64)> = groups
            .iter()
            .map(|(l, f)| (l, f.gauges(), f.streams))
            .collect();
        for (i, (name, help)) in GAUGES.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, values, _) in &gauges {
                let _ = writeln!(out, "{name}{{{labels}}} {}", values[i]);
            }
        }
        let _ = writeln!(
            out,
            "# HELP millrace_streams Streams counted in each label set.\n# TYPE millrace_streams gauge"
        );
        for (labels, _, streams) in &gauges {
            let _ = writeln!(out, "millrace_streams{{{labels}}} {streams}");
        }
        let _ = writeln!(
            out,
            "# HELP millrace_ready Whether Supervisor::is_ready() holds (1) or not (0).\n# TYPE millrace_ready gauge\nmillrace_ready {}",
            u8::from(self.is_ready())
        );
        out
    }
}
