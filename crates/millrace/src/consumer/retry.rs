//! Retry after a delay, on the consumer's side: the schedule of this consumer's delayed entries
//! (kept across restarts of the consumer), the delay itself (the entry's idle time backdated to
//! `claim_min_idle − delay`, so any consumer's `XAUTOCLAIM` takes it once the delay is over), the
//! take-back of due entries by this consumer (one delivery counted, as a claim counts it), and the
//! hold-back of entries a replay read before they were due.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Consumer;
use crate::entry::{EntryId, RawEntry, Source};
use crate::error::Result;
use crate::streams::delay::{self, Backdate};
use crate::streams::ReadItem;

/// This consumer's delayed entries by due time. Shared by the incarnations of one consumer (it
/// lives with its [`Stats`](super::Stats)), so a restart after a panic keeps the delays.
#[derive(Debug, Default)]
pub(crate) struct RetrySchedule {
    by_due: BTreeSet<(Instant, EntryId)>,
    by_id: HashMap<EntryId, Instant>,
}

/// The schedule of one consumer, shared by its incarnations.
pub(crate) type SharedSchedule = Arc<Mutex<RetrySchedule>>;

impl RetrySchedule {
    fn insert(&mut self, id: EntryId, due: Instant) {
        if let Some(old) = self.by_id.insert(id, due) {
            self.by_due.remove(&(old, id));
        }
        self.by_due.insert((due, id));
    }

    /// Forgets entries handed to a handler (by any path) or settled.
    pub(crate) fn remove(&mut self, ids: impl IntoIterator<Item = EntryId>) {
        if self.by_id.is_empty() {
            return;
        }
        for id in ids {
            if let Some(due) = self.by_id.remove(&id) {
                self.by_due.remove(&(due, id));
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_due.first().map(|(due, _)| *due)
    }

    /// Up to `max` ids due at `now`, earliest first, taken off the schedule.
    fn pop_due(&mut self, now: Instant, max: usize) -> Vec<EntryId> {
        let mut due = Vec::new();
        while due.len() < max {
            match self.by_due.first() {
                Some(&(at, id)) if at <= now => {
                    self.by_due.pop_first();
                    self.by_id.remove(&id);
                    due.push(id);
                }
                _ => break,
            }
        }
        due
    }

    fn due_of(&self, id: EntryId) -> Option<Instant> {
        self.by_id.get(&id).copied()
    }

    fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl Consumer {
    fn schedule(&self) -> MutexGuard<'_, RetrySchedule> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the earliest delayed entry is due, if any.
    pub(super) fn retry_due_at(&self) -> Option<Instant> {
        self.schedule().next_due()
    }

    /// Delays entries a handler left pending, from `returned_at` (when the handler returned): their
    /// idle time is backdated so that they become claimable by anyone when the delay is over, and
    /// this consumer takes them back itself at that time. A delay over `claim_min_idle` is
    /// shortened to it, with a warning.
    pub(super) async fn delay(
        &mut self,
        entries: Vec<(EntryId, Duration)>,
        returned_at: Instant,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let longest = self.opts.claim_min_idle;
        let mut clamped = 0;
        let orders: Vec<Backdate> = entries
            .iter()
            .map(|&(id, delay)| {
                if delay > longest {
                    clamped += 1;
                }
                (id, longest - delay.min(longest), 0)
            })
            .collect();
        if clamped > 0 {
            if let Some(held_back) = self.retry_warnings.allow() {
                warn!(entries = clamped, claim_min_idle = ?longest, held_back, "a retry delay longer than claim_min_idle was shortened to it (a delay is kept by the entry's idle time, which claim_min_idle bounds); raise claim_min_idle for longer delays");
            }
        }
        {
            let mut schedule = self.schedule();
            for &(id, delay) in &entries {
                schedule.insert(id, returned_at + delay.min(longest));
            }
        }
        let set = self.backdate(&orders).await?;
        if set.len() < orders.len() {
            debug!(
                entries = orders.len() - set.len(),
                "entries to delay were no longer pending for this consumer"
            );
        }
        debug!(entries = set.len(), "entries delayed for a retry");
        Ok(())
    }

    async fn backdate(&self, orders: &[Backdate]) -> Result<Vec<EntryId>> {
        let id = self.id.clone();
        let (stream, group, consumer) = (&*id.stream, &*id.group, &*id.consumer);
        self.client
            .retry("EVALSHA (retry delay)", stream, |mut c| async move {
                delay::backdate_if_owned(&mut c, stream, group, consumer, orders).await
            })
            .await
    }

    /// Of a replay's entries, holds back those still waiting out a delay: the replay's read reset
    /// their idle time and counted a delivery, so both are put back (the rest of the delay, the
    /// count less one). Returns the entries to handle now.
    pub(super) async fn hold_back(&mut self, live: Vec<RawEntry>) -> Result<Vec<RawEntry>> {
        let now = Instant::now();
        let longest = self.opts.claim_min_idle;
        let mut orders = Vec::new();
        let mut rest = Vec::with_capacity(live.len());
        {
            let schedule = self.schedule();
            if schedule.is_empty() {
                return Ok(live);
            }
            for e in live {
                match schedule.due_of(e.id) {
                    Some(due) if due > now => {
                        let remaining = (due - now).min(longest);
                        orders.push((e.id, longest - remaining, -1));
                    }
                    _ => rest.push(e),
                }
            }
        }
        if !orders.is_empty() {
            debug!(
                entries = orders.len(),
                "replay: entries still waiting out a retry delay are held back"
            );
            self.backdate(&orders).await?;
        }
        Ok(rest)
    }

    /// Takes back and handles the delayed entries that are due, still pending for this consumer.
    /// Entries another consumer took meanwhile (this one stalled past the due time) are skipped.
    pub(super) async fn retry_due(&mut self) -> Result<()> {
        let max = self.opts.largest_count();
        loop {
            let ids = self.schedule().pop_due(Instant::now(), max);
            if ids.is_empty() {
                return Ok(());
            }
            let id = self.id.clone();
            let (stream, group, consumer) = (&*id.stream, &*id.group, &*id.consumer);
            let ids = &ids;
            let taken = self
                .client
                .retry("EVALSHA (retry take-back)", stream, |mut c| async move {
                    delay::take_back_if_owned(&mut c, stream, group, consumer, ids).await
                })
                .await?;
            if taken.len() < ids.len() {
                info!(
                    entries = ids.len() - taken.len(),
                    "entries due for a retry are no longer pending for this consumer (acknowledged, or claimed by another consumer); skipped"
                );
            }
            let mut entries = Vec::with_capacity(taken.len());
            let mut deleted = Vec::new();
            for (item, deliveries) in taken {
                match item {
                    ReadItem::Entry(e) => entries.push((e, deliveries)),
                    other => deleted.extend(other.id()),
                }
            }
            if !deleted.is_empty() {
                info!(
                    entries = deleted.len(),
                    "entries due for a retry were deleted or trimmed; Redis dropped them from the pending list"
                );
                self.stats.deleted_while_pending(deleted.len());
                self.failures.forget(&deleted);
            }
            self.stats.received(entries.len());
            let batch = self.screen_poison(entries).await?;
            if batch.is_empty() {
                continue;
            }
            let handled = self
                .run_batch(batch, Source::Retried, Duration::ZERO)
                .await?;
            self.acker.ack(handled.ack).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> EntryId {
        EntryId::new(1, seq)
    }

    #[test]
    fn due_entries_come_off_earliest_first_and_a_new_due_time_replaces_the_old() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut s = RetrySchedule::default();
        s.insert(id(1), t + ms(30));
        s.insert(id(2), t + ms(10));
        s.insert(id(3), t + ms(20));
        s.insert(id(1), t + ms(5));
        assert_eq!(s.next_due(), Some(t + ms(5)));
        assert_eq!(s.pop_due(t + ms(15), 10), vec![id(1), id(2)]);
        assert_eq!(s.pop_due(t + ms(15), 10), vec![]);
        s.remove([id(3)]);
        assert!(s.is_empty() && s.next_due().is_none());
    }

    #[test]
    fn pop_due_takes_at_most_max() {
        let t = Instant::now();
        let mut s = RetrySchedule::default();
        for i in 0..5 {
            s.insert(id(i), t);
        }
        assert_eq!(s.pop_due(t, 2).len(), 2);
        assert_eq!(s.pop_due(t, 10).len(), 3);
    }
}
