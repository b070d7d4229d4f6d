//! The last failure reason of each entry a handler left pending, kept in memory so a later dead
//! letter can say why the entry failed.

use std::collections::HashMap;

use crate::entry::EntryId;

/// Most reasons remembered; past it the log starts over (a dead letter then says "unknown").
const CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    reasons: HashMap<EntryId, String>,
}

impl FailureLog {
    pub(crate) fn note(&mut self, ids: &[EntryId], reason: &str) {
        if self.reasons.len() + ids.len() > CAPACITY {
            self.reasons.clear();
        }
        for id in ids {
            self.reasons.insert(*id, reason.to_owned());
        }
    }

    /// Forgets settled entries (acknowledged, dead-lettered, deleted).
    pub(crate) fn forget(&mut self, ids: &[EntryId]) {
        if self.reasons.is_empty() {
            return;
        }
        for id in ids {
            self.reasons.remove(id);
        }
    }

    pub(crate) fn last(&self, id: EntryId) -> Option<&str> {
        self.reasons.get(&id).map(String::as_str)
    }
}

/// Shortest time between two warnings about failed batches of one consumer.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Lets one warning through per [`WARN_EVERY`] and counts the ones it held back, so a handler that
/// fails every batch cannot flood the log.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl WarnLimiter {
    /// `Some(n)` when a warning may go out now, `n` being how many were held back since the last.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}
