//! Health of supervised consumers: state, last successful read, restarts, last error and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::id::ConsumerId;

/// Where a consumer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConsumerState {
    /// Connecting, creating the group, replaying its own pending entries.
    Starting,
    /// Reading and handling entries.
    Running,
    /// Redis is unreachable or failing; retrying with backoff.
    Reconnecting,
    /// Crashed; the supervisor restarts it after a backoff.
    BackingOff,
    /// Stopping gracefully.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Given up on (restart limit or an error restarting cannot fix).
    Failed,
}

impl std::fmt::Display for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConsumerState::Starting => "starting",
            ConsumerState::Running => "running",
            ConsumerState::Reconnecting => "reconnecting",
            ConsumerState::BackingOff => "backing off",
            ConsumerState::Stopping => "stopping",
            ConsumerState::Stopped => "stopped",
            ConsumerState::Failed => "failed",
        })
    }
}

/// Counters of one consumer since it was added (they survive restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerCounters {
    /// Entries read (new, replayed and claimed), tombstones excluded.
    pub received: u64,
    /// Entries acknowledged after handling.
    pub acked: u64,
    /// Entries of failed batches (Err, panic, timeout, foreign ids) left pending.
    pub failed: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries claimed from other consumers.
    pub claimed: u64,
    /// Pending entries found deleted or trimmed, removed from the pending list.
    pub deleted_while_pending: u64,
    /// Entries delivered again after an earlier delivery (replays and claims of entries delivered before).
    pub redelivered: u64,
    /// Times the group or key vanished and was recreated.
    pub group_recreated: u64,
    /// Reconnects after transient errors.
    pub reconnects: u64,
    /// Dead-letter moves that failed (their dead-letter stream could not be written) and were
    /// retried later; the entries stayed pending and were not handed to the handler again.
    pub dead_letter_retries: u64,
}

/// Pending and lag figures of a consumer's group, as last read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupGauges {
    /// Entries pending in the group, all consumers together.
    pub group_pending: u64,
    /// Entries pending for this consumer.
    pub consumer_pending: u64,
    /// Idle time of the group's oldest pending entry.
    pub oldest_pending_idle: Option<std::time::Duration>,
    /// Entries added but not yet delivered to the group; `None` when Redis cannot tell (after deletions).
    pub lag: Option<u64>,
    /// Age of the oldest entry not yet delivered to the group (by its id's time; zero when every
    /// entry was delivered): how far behind the group is in time, beside `lag` in entries. `None`
    /// when Redis cannot tell.
    pub oldest_undelivered_age: Option<std::time::Duration>,
    /// When these figures were read.
    pub at: SystemTime,
}

/// One multi-stream consumer's streams, as [`Supervisor::stream_sets`](crate::Supervisor::stream_sets)
/// shows them: the streams it reads now and, for a consumer made with
/// [`MultiStreamSpec::pattern`](crate::MultiStreamSpec::pattern), what the last sweep of the keyspace
/// found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSet {
    /// The consumer group.
    pub group: String,
    /// The consumer name.
    pub consumer: String,
    /// The key pattern; `None` for named streams.
    pub pattern: Option<String>,
    /// The streams read now, sorted (as [`Supervisor::streams_of`](crate::Supervisor::streams_of)).
    pub streams: Vec<String>,
    /// Keys matching the pattern that are not streams (skipped), at the last complete sweep.
    pub other_type_keys: usize,
    /// Up to ten of them, sorted.
    pub other_type_examples: Vec<String>,
    /// Matching streams that are dead-letter streams of streams found or read (skipped, so no
    /// consumer reads dead letters).
    pub dead_letter_streams: usize,
    /// Keys matching the pattern whose names are not UTF-8 or hold control characters (CR, LF,
    /// NUL, any other C0, DEL), at the last complete sweep: skipped, since Redis writes such
    /// names mangled in its replies. Rename the keys to have them read.
    pub unusable_name_keys: usize,
    /// When the last sweep completed; `None` before the first, and for named streams.
    pub last_sweep: Option<SystemTime>,
    /// Complete sweeps so far.
    pub sweeps: u64,
    /// Why the last sweep failed, or why a stream it found could not be added; cleared by the
    /// next sweep that applies cleanly.
    pub last_error: Option<String>,
}

/// A snapshot of one consumer's health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerHealth {
    /// Which consumer.
    pub id: ConsumerId,
    /// Its state.
    pub state: ConsumerState,
    /// When it last read from Redis successfully.
    pub last_read: Option<SystemTime>,
    /// Restarts within the current restart window.
    pub restarts_in_window: usize,
    /// Restarts since it was added.
    pub restarts_total: u64,
    /// The last error, if any. A lost connection (an outage: a failover, `CLIENT KILL`, a reset)
    /// is cleared, with [`ConsumerHealth::last_error_at`], by the first read that succeeds after
    /// it; a handler's failure stays until the next error.
    pub last_error: Option<String>,
    /// When [`ConsumerHealth::last_error`] happened.
    pub last_error_at: Option<SystemTime>,
    /// The group's view, refreshed every `gauge_interval`: entries pending in the group, for this
    /// consumer, the oldest pending entry's idle time, and the lag (when Redis knows it).
    pub group: Option<GroupGauges>,
    /// Counters.
    pub counters: ConsumerCounters,
    /// Dead-letter moves waiting now for their dead-letter stream to accept them (retried in the
    /// background; their entries stay pending and are not handed to the handler again).
    pub dead_letters_waiting: u64,
}

impl ConsumerHealth {
    /// True when the consumer is reading.
    pub fn is_running(&self) -> bool {
        self.state == ConsumerState::Running
    }
}

impl Slow {
    fn enter(&mut self, state: ConsumerState) {
        self.state = state;
        if state == ConsumerState::Running {
            self.unready_since = None;
            self.ever_running = true;
        } else if self.unready_since.is_none() {
            self.unready_since = Some(Instant::now());
        }
    }
}

#[derive(Debug)]
struct Slow {
    state: ConsumerState,
    last_read: Option<SystemTime>,
    restarts_in_window: usize,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    /// The last error is a lost connection, cleared once reading resumes.
    error_is_outage: bool,
    group: Option<GroupGauges>,
    /// Since when it is not running (`None` while it runs).
    unready_since: Option<Instant>,
    /// It has run at least once (a first start is not ready until it reads).
    ever_running: bool,
}

/// Shared, cheap-to-update health record of one consumer.
#[derive(Debug)]
pub(crate) struct HealthCell {
    id: ConsumerId,
    slow: Mutex<Slow>,
    pub(crate) received: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) deleted_while_pending: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) group_recreated: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) restarts_total: AtomicU64,
    pub(crate) dead_letter_retries: AtomicU64,
    pub(crate) dead_letters_waiting: AtomicU64,
}

impl HealthCell {
    pub(crate) fn new(id: ConsumerId) -> Self {
        HealthCell {
            id,
            slow: Mutex::new(Slow {
                state: ConsumerState::Starting,
                last_read: None,
                restarts_in_window: 0,
                last_error: None,
                last_error_at: None,
                error_is_outage: false,
                group: None,
                unready_since: Some(Instant::now()),
                ever_running: false,
            }),
            received: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            deleted_while_pending: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            group_recreated: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            restarts_total: AtomicU64::new(0),
            dead_letter_retries: AtomicU64::new(0),
            dead_letters_waiting: AtomicU64::new(0),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Slow) -> R) -> R {
        let mut guard = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub(crate) fn set_state(&self, state: ConsumerState) {
        self.with(|s| s.enter(state));
    }

    /// Whether the consumer counts as ready: running, or (after it ran) out of `Running` for less
    /// than `grace` while it reconnects, restarts or starts a new session. `Err` says why not.
    pub(crate) fn readiness(&self, grace: Duration) -> Result<(), String> {
        self.with(|s| {
            let away = s.unready_since.map(|t| t.elapsed());
            let passing = matches!(
                s.state,
                ConsumerState::Starting | ConsumerState::Reconnecting | ConsumerState::BackingOff
            );
            match away {
                None => Ok(()),
                Some(away) if s.ever_running && passing && away < grace => Ok(()),
                Some(away) => Err(format!(
                    "{}: {} for {}{}",
                    self.id,
                    s.state,
                    humantime::format_duration(Duration::from_secs(away.as_secs())),
                    s.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )),
            }
        })
    }

    pub(crate) fn state(&self) -> ConsumerState {
        self.with(|s| s.state)
    }

    pub(crate) fn read_ok(&self) {
        self.with(|s| {
            s.last_read = Some(SystemTime::now());
            if s.error_is_outage {
                s.last_error = None;
                s.last_error_at = None;
                s.error_is_outage = false;
            }
            if s.state != ConsumerState::Stopping {
                s.enter(ConsumerState::Running);
            }
        });
    }

    pub(crate) fn set_error(&self, error: String) {
        self.note_error(error, false);
    }

    /// The connection was lost: `error` is cleared by the next successful read.
    pub(crate) fn set_outage_error(&self, error: String) {
        self.note_error(error, true);
    }

    fn note_error(&self, error: String, outage: bool) {
        self.with(|s| {
            s.last_error = Some(error);
            s.last_error_at = Some(SystemTime::now());
            s.error_is_outage = outage;
        });
    }

    pub(crate) fn set_group(&self, gauges: GroupGauges) {
        self.with(|s| s.group = Some(gauges));
    }

    pub(crate) fn set_restarts(&self, in_window: usize) {
        self.with(|s| s.restarts_in_window = in_window);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ConsumerHealth {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (state, last_read, restarts_in_window, last_error, last_error_at, group) =
            self.with(|s| {
                (
                    s.state,
                    s.last_read,
                    s.restarts_in_window,
                    s.last_error.clone(),
                    s.last_error_at,
                    s.group.clone(),
                )
            });
        ConsumerHealth {
            id: self.id.clone(),
            state,
            last_read,
            restarts_in_window,
            restarts_total: get(&self.restarts_total),
            last_error,
            last_error_at,
            group,
            counters: ConsumerCounters {
                received: get(&self.received),
                acked: get(&self.acked),
                failed: get(&self.failed),
                dead_lettered: get(&self.dead_lettered),
                claimed: get(&self.claimed),
                deleted_while_pending: get(&self.deleted_while_pending),
                redelivered: get(&self.redelivered),
                group_recreated: get(&self.group_recreated),
                reconnects: get(&self.reconnects),
                dead_letter_retries: get(&self.dead_letter_retries),
            },
            dead_letters_waiting: get(&self.dead_letters_waiting),
        }
    }
}
