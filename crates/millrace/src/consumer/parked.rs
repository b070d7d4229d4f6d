//! A consumer's dead-letter moves, and the ones that could not be made yet: a move that fails
//! (its dead-letter stream's master is down, the key is of another type, a `NOPERM` on it) is
//! parked instead of failing the batch. The entry stays pending for this consumer, is never handed
//! to the handler again (the consumer skips parked ids when it reads them again), and the move is
//! retried in the background with backoff until it lands; meanwhile the rest of the batch is
//! acknowledged as usual and other batches go on. A failed move is counted and logged once per
//! outage; `ConsumerHealth::dead_letters_waiting` shows the moves waiting.
//!
//! What is parked lives in memory: after a restart of the consumer, its own pending entries come
//! back through the replay, where poison and undecodable entries are dead-lettered again without
//! the handler, and an entry the handler dead-lettered itself is handed to it once more.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, error, info, warn};

use super::Stats;
use crate::config::backoff_with_jitter;
use crate::connection::Control;
use crate::dead_letter::{move_entry, now_ms, DeadLetterInfo, Marker};
use crate::entry::{EntryId, RawEntry};
use crate::id::ConsumerId;
use crate::streams;

#[cfg(test)]
mod tests;

/// The longest a move made in the batch's path may take before it is parked and retried in the
/// background: a dead-letter stream that does not answer never holds up its stream for longer.
const INLINE_LIMIT: Duration = Duration::from_millis(500);
/// First pause between retries of the parked moves; it doubles up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two retries.
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// One move to make.
#[derive(Debug, Clone)]
struct Move {
    /// The entry; without fields, the move copies those the stream still holds.
    entry: RawEntry,
    deliveries: Option<u64>,
    reason: String,
    at_ms: u128,
    marker: Marker,
}

#[derive(Debug, Default)]
struct State {
    waiting: BTreeMap<EntryId, Move>,
    /// The retry task runs.
    retrying: bool,
}

#[derive(Debug)]
struct Shared {
    id: ConsumerId,
    dlq: String,
    in_steps: bool,
    conn: Control,
    stats: Stats,
    attempt_limit: Duration,
    /// The longest pause between retry rounds: a third of `claim_min_idle`, so the waiting
    /// entries' idle time is reset before any consumer may claim them.
    longest_pause: Duration,
    state: Mutex<State>,
    cancel: CancellationToken,
}

/// The dead-letter moves of one consumer: made at once when they can be, parked and retried when
/// they cannot. Dropping it stops the retries.
#[derive(Debug)]
pub(crate) struct DeadLetterMover {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl DeadLetterMover {
    /// The mover of consumer `id` to `dlq`, over `conn`; `attempt_limit` bounds one background
    /// attempt (the command timeout); `claim_min_idle` is the consumer's.
    pub(crate) fn new(
        id: ConsumerId,
        dlq: String,
        in_steps: bool,
        conn: Control,
        stats: Stats,
        attempt_limit: Duration,
        claim_min_idle: Duration,
    ) -> DeadLetterMover {
        let cancel = CancellationToken::new();
        DeadLetterMover {
            _stop: cancel.clone().drop_guard(),
            shared: Arc::new(Shared {
                id,
                dlq,
                in_steps,
                conn,
                stats,
                attempt_limit: attempt_limit.max(INLINE_LIMIT),
                longest_pause: (claim_min_idle / 3).clamp(Duration::from_millis(10), LONGEST_PAUSE),
                state: Mutex::new(State::default()),
                cancel,
            }),
        }
    }

    /// Leaves out of `entries` those whose move is parked: they must not be handed to the
    /// handler. One lock per batch, and no look-up at all while no move waits (the usual case).
    pub(crate) fn drop_parked(&self, entries: &mut Vec<RawEntry>) {
        let state = self.shared.lock();
        if state.waiting.is_empty() {
            return;
        }
        entries.retain(|e| !state.waiting.contains_key(&e.id));
    }

    /// Whether the move of `id` is parked (for tests; the consume path uses [`Self::drop_parked`]).
    #[cfg(test)]
    pub(crate) fn is_parked(&self, id: EntryId) -> bool {
        self.shared.lock().waiting.contains_key(&id)
    }

    /// Moves entry `id` (with `entry`'s fields when at hand) to the dead-letter stream, or parks
    /// the move when it fails or takes longer than a moment. Never fails: the entry stays pending
    /// until the move lands.
    pub(crate) async fn dead_letter(
        &self,
        id: EntryId,
        entry: Option<RawEntry>,
        deliveries: Option<u64>,
        reason: String,
    ) {
        let mut mv = Move {
            entry: entry
                .filter(|e| !e.fields.is_empty())
                .unwrap_or_else(|| RawEntry::new(id, Vec::new())),
            deliveries,
            reason,
            at_ms: now_ms(),
            marker: Marker::default(),
        };
        // While moves wait, the dead-letter stream is failing: park at once, in order, rather than
        // make every batch wait for it.
        if !self.shared.lock().waiting.is_empty() {
            self.park(id, mv, None);
            return;
        }
        match self.shared.attempt(&mut mv, INLINE_LIMIT).await {
            Ok(moved) => self.shared.moved(id, &mv, moved),
            Err(e) => self.park(id, mv, Some(e)),
        }
    }

    /// Parks the move of `id`, which failed with `error` (`None`: not tried, as others wait).
    fn park(&self, id: EntryId, mv: Move, error: Option<String>) {
        let shared = &self.shared;
        if let Some(error) = &error {
            shared.failed(error);
        }
        let start = {
            let mut state = shared.lock();
            if state.waiting.is_empty() {
                warn!(entry_id = %id, dead_letter_stream = %shared.dlq, error = error.as_deref().unwrap_or(""), "a dead-letter move failed: the entry stays pending, is not handed to the handler again, and the move is retried in the background; the rest of the batch goes on");
            } else {
                debug!(entry_id = %id, "dead-letter move parked behind the waiting ones");
            }
            state.waiting.insert(id, mv);
            shared.stats.set_dead_letters_waiting(state.waiting.len());
            !std::mem::replace(&mut state.retrying, true)
        };
        if start {
            tokio::spawn(self.shared.clone().retry());
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One attempt of `mv`, bounded by `limit`; the error as text.
    async fn attempt(&self, mv: &mut Move, limit: Duration) -> Result<bool, String> {
        let info = DeadLetterInfo {
            stream: &self.id.stream,
            dlq: &self.dlq,
            group: &self.id.group,
            consumer: &self.id.consumer,
            deliveries: mv.deliveries,
            reason: &mv.reason,
            at_ms: mv.at_ms,
            in_steps: self.in_steps,
        };
        let mut conn = self.conn.clone();
        let run = move_entry(&mut conn, &info, &mv.entry, &mut mv.marker);
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(moved)) => Ok(moved),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            )),
        }
    }

    /// A move failed with `error`: counted, and in health's `last_error`.
    fn failed(&self, error: &str) {
        self.stats.dead_letter_retry();
        self.stats.set_error(format!(
            "dead-letter move to `{}` failed: {error}",
            self.dlq
        ));
    }

    fn moved(&self, id: EntryId, mv: &Move, moved: bool) {
        if moved {
            error!(entry_id = %id, deliveries = mv.deliveries, dead_letter_stream = %self.dlq, reason = %mv.reason, "moved entry to the dead-letter stream");
            self.stats.dead_lettered();
        }
    }

    /// Retries the parked moves, oldest first, until none is left or the consumer is gone.
    async fn retry(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let first = FIRST_PAUSE.min(self.longest_pause);
            let pause = backoff_with_jitter(first, self.longest_pause, failures);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let ids: Vec<EntryId> = self.lock().waiting.keys().copied().collect();
            self.keep_owned(&ids).await;
            let mut progress = false;
            for id in ids {
                let Some(mut mv) = self.lock().waiting.get(&id).cloned() else {
                    continue;
                };
                let result = self.attempt(&mut mv, self.attempt_limit).await;
                let mut state = self.lock();
                match result {
                    Ok(moved) => {
                        state.waiting.remove(&id);
                        self.stats.set_dead_letters_waiting(state.waiting.len());
                        drop(state);
                        self.moved(id, &mv, moved);
                        progress = true;
                    }
                    Err(e) => {
                        if let Some(waiting) = state.waiting.get_mut(&id) {
                            waiting.marker = mv.marker;
                        }
                        drop(state);
                        self.failed(&e);
                        debug!(entry_id = %id, error = %e, "dead-letter move still failing");
                        break;
                    }
                }
                if self.cancel.is_cancelled() {
                    return;
                }
            }
            failures = if progress {
                0
            } else {
                failures.saturating_add(1)
            };
            let mut state = self.lock();
            if state.waiting.is_empty() {
                state.retrying = false;
                info!(dead_letter_stream = %self.dlq, "the waiting dead-letter moves are done");
                return;
            }
        }
    }

    /// Keeps the parked entries `ids` (sorted) from being claimed by other consumers (their idle
    /// time reset); forgets those of them no longer pending for this consumer (acknowledged, or
    /// claimed meanwhile).
    async fn keep_owned(&self, ids: &[EntryId]) {
        let mut conn = self.conn.clone();
        let owned = streams::set_idle_if_owned(
            &mut conn,
            &self.id.stream,
            &self.id.group,
            &self.id.consumer,
            ids,
            Duration::ZERO,
        );
        let Ok(Ok(owned)) = tokio::time::timeout(self.attempt_limit, owned).await else {
            return;
        };
        let owned: std::collections::HashSet<EntryId> =
            owned.into_iter().map(|(id, _)| id).collect();
        let mut state = self.lock();
        // Only the entries asked about can be found not owned: one parked meanwhile (after `ids`
        // was taken, while this call was on the wire) is kept for the next round. `ids` is sorted
        // (the keys of `waiting`).
        state
            .waiting
            .retain(|id, _| owned.contains(id) || ids.binary_search(id).is_err());
        self.stats.set_dead_letters_waiting(state.waiting.len());
    }
}
