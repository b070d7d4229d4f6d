//! Pure decisions of a consumer, with no I/O: how a read's items are sorted before the handler sees
//! them, which entries the poison cap sends away, and the ack plan that follows from a handler's
//! report (ack these, dead-letter those, leave the rest pending). The rows of `docs/semantics.md`
//! are this module's unit tests.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::entry::{EntryId, RawEntry};
use crate::handler::{Outcome, RunReport};
use crate::streams::ReadItem;
use crate::{HandlerResult, RetryBackoff};

/// A read's items, sorted by what happens to them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sorted {
    /// Entries with fields: candidates for the handler.
    pub(crate) live: Vec<RawEntry>,
    /// Pending ids whose entry was deleted or trimmed: acknowledged, never handed over.
    pub(crate) tombstones: Vec<EntryId>,
    /// Ids whose entry is not a list of fields: dead-lettered by id.
    pub(crate) malformed: Vec<(EntryId, String)>,
    /// Reply elements without an id: nothing can be done but say so.
    pub(crate) unidentified: Vec<String>,
}

/// Sorts a read's items (see "How a batch is formed" in `docs/semantics.md`).
pub(crate) fn sort(items: Vec<ReadItem>) -> Sorted {
    let mut sorted = Sorted {
        live: Vec::with_capacity(items.len()),
        ..Sorted::default()
    };
    for item in items {
        match item {
            ReadItem::Entry(e) => sorted.live.push(e),
            ReadItem::Tombstone(id) => sorted.tombstones.push(id),
            ReadItem::Malformed {
                id: Some(id),
                reason,
            } => sorted.malformed.push((id, reason)),
            ReadItem::Malformed { id: None, reason } => sorted.unidentified.push(reason),
        }
    }
    sorted
}

/// Whether an entry delivered `deliveries` times has used up its deliveries.
pub(crate) fn is_poison(deliveries: u64, max_deliveries: u64) -> bool {
    deliveries > max_deliveries
}

/// The dead-letter reason of a poison entry.
pub(crate) fn poison_reason(
    deliveries: u64,
    max_deliveries: u64,
    last_error: Option<&str>,
) -> String {
    let last = last_error.unwrap_or("unknown (failed in an earlier process or incarnation)");
    format!("delivered {deliveries} times, more than max_deliveries = {max_deliveries}; last error: {last}")
}

/// One entry to move to the dead-letter stream.
#[derive(Debug, PartialEq)]
pub(crate) struct DeadLetterOrder {
    pub(crate) id: EntryId,
    /// The entry's fields when they are at hand (an undecodable entry); otherwise the move copies
    /// them from the stream.
    pub(crate) entry: Option<RawEntry>,
    pub(crate) deliveries: Option<u64>,
    pub(crate) reason: String,
}

/// What to do in Redis after a handler ran.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct AckPlan {
    /// Ids to acknowledge.
    pub(crate) ack: Vec<EntryId>,
    /// Entries to move to the dead-letter stream (the move acknowledges them).
    pub(crate) dead_letter: Vec<DeadLetterOrder>,
    /// Ids left pending, with the reason (remembered for a later dead letter).
    pub(crate) left_pending: Vec<EntryId>,
    /// Of `left_pending`, those to come back after a delay (asked by the handler, or the backoff
    /// of a failed batch), in batch order. The others come back through `XAUTOCLAIM`.
    pub(crate) retry: Vec<(EntryId, Duration)>,
    pub(crate) failure: Option<String>,
    /// The handler panicked with this message: the consumer is restarted after the plan is applied.
    pub(crate) panicked: Option<String>,
    /// Ids the handler named that were not in its batch (ignored; worth a warning).
    pub(crate) foreign: Vec<EntryId>,
    /// Whether the handler ran at all (it does not when no entry could be decoded).
    pub(crate) handler_ran: bool,
    /// The handler failed (`Err`, panic, timeout, a `Partial` naming a foreign id), as opposed to
    /// leaving entries pending on purpose with `Partial`.
    pub(crate) handler_failed: bool,
}

/// The ack plan for a handler's report, with no backoff.
#[cfg(test)]
pub(crate) fn plan(report: RunReport, deliveries: impl Fn(EntryId) -> Option<u64>) -> AckPlan {
    plan_with(report, deliveries, None)
}

/// The ack plan for a handler's report. `deliveries` gives the delivery count of a handed id;
/// `backoff` delays the entries of a failed batch.
pub(crate) fn plan_with(
    report: RunReport,
    deliveries: impl Fn(EntryId) -> Option<u64>,
    backoff: Option<&RetryBackoff>,
) -> AckPlan {
    let mut plan = AckPlan {
        handler_ran: !matches!(report.outcome, Outcome::NotRun),
        ..AckPlan::default()
    };
    for (raw, deliveries, err) in report.undecodable {
        plan.dead_letter.push(DeadLetterOrder {
            id: raw.id,
            entry: Some(raw),
            deliveries,
            reason: format!("cannot decode: {err}"),
        });
    }
    let handed = report.handed;
    // Only a handler that names ids (dead letters, `Partial`) needs the batch as a set: the
    // common `Ok` builds none.
    let names_ids = !report.dead_letters.is_empty()
        || !report.retries.is_empty()
        || matches!(report.outcome, Outcome::Returned(HandlerResult::Partial(_)));
    let in_batch: HashSet<EntryId> = if names_ids {
        handed.iter().copied().collect()
    } else {
        HashSet::new()
    };
    // Entries the handler dead-lettered itself, whatever it returned: moved (so acknowledged) by
    // the move, and left out of the XACK.
    let mut explicit: HashSet<EntryId> = HashSet::new();
    for (id, reason) in report.dead_letters {
        if !in_batch.contains(&id) {
            plan.foreign.push(id);
        } else if explicit.insert(id) {
            plan.dead_letter.push(DeadLetterOrder {
                id,
                entry: None,
                deliveries: deliveries(id),
                reason: format!("dead-lettered by the handler: {reason}"),
            });
        }
    }
    // Entries the handler asked back after a delay (a dead-letter request wins; the first
    // request of an entry counts): left out of the XACK.
    let mut asked: HashMap<EntryId, Duration> = HashMap::new();
    for (id, delay) in report.retries {
        if !in_batch.contains(&id) {
            plan.foreign.push(id);
        } else if !explicit.contains(&id) {
            asked.entry(id).or_insert(delay);
        }
    }
    let batch_delay = match &report.outcome {
        Outcome::Returned(HandlerResult::RetryAfter(delay)) => Some(*delay),
        _ => None,
    };
    let partial_on_purpose = matches!(&report.outcome, Outcome::Returned(HandlerResult::Partial(ids)) if ids.iter().all(|id| in_batch.contains(id)));
    let (ack, failure): (Vec<EntryId>, Option<String>) = match report.outcome {
        Outcome::NotRun => (Vec::new(), None),
        Outcome::Returned(HandlerResult::Ok) => (handed.clone(), None),
        Outcome::Returned(HandlerResult::Partial(ids)) => {
            match ids.iter().find(|id| !in_batch.contains(id)) {
                Some(&foreign) => {
                    plan.foreign.push(foreign);
                    let reason = format!("Partial named id {foreign}, which is not in the batch");
                    (Vec::new(), Some(reason))
                }
                None => {
                    let mut seen = HashSet::with_capacity(ids.len());
                    let acked = ids.into_iter().filter(|id| seen.insert(*id)).collect();
                    (
                        acked,
                        Some("left unacknowledged by a Partial result".to_owned()),
                    )
                }
            }
        }
        Outcome::Returned(HandlerResult::Err(e)) => (Vec::new(), Some(e.to_string())),
        Outcome::Returned(HandlerResult::RetryAfter(delay)) => {
            let reason = format!(
                "the handler asked to retry after {}",
                humantime::format_duration(delay)
            );
            (Vec::new(), Some(reason))
        }
        Outcome::Panicked(message) => {
            let reason = format!("handler panicked: {message}");
            plan.panicked = Some(message);
            (Vec::new(), Some(reason))
        }
        Outcome::TimedOut(limit) => (
            Vec::new(),
            Some(format!(
                "handler ran past handler_timeout ({})",
                humantime::format_duration(limit)
            )),
        ),
    };
    plan.handler_failed = failure.is_some() && !partial_on_purpose && batch_delay.is_none();
    plan.ack = ack
        .into_iter()
        .filter(|id| !explicit.contains(id) && !asked.contains_key(id))
        .collect();
    let failure = match failure {
        None if !asked.is_empty() => Some("the handler asked to retry it later".to_owned()),
        other => other,
    };
    if let Some(reason) = failure {
        let settled: HashSet<EntryId> = plan.ack.iter().chain(explicit.iter()).copied().collect();
        plan.left_pending = handed
            .into_iter()
            .filter(|id| !settled.contains(id))
            .collect();
        plan.failure = Some(reason);
    }
    let backoff = backoff.filter(|_| plan.handler_failed);
    plan.retry = plan
        .left_pending
        .iter()
        .filter_map(|&id| {
            let delay = asked
                .get(&id)
                .copied()
                .or(batch_delay)
                .or_else(|| backoff.map(|b| b.delay(deliveries(id).unwrap_or(1))))?;
            Some((id, delay))
        })
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::decode::DecodeError;

    fn id(seq: u64) -> EntryId {
        EntryId::new(1, seq)
    }

    fn report(handed: &[u64], outcome: Outcome) -> RunReport {
        RunReport {
            handed: handed.iter().map(|&s| id(s)).collect(),
            undecodable: Vec::new(),
            outcome,
            dead_letters: Vec::new(),
            retries: Vec::new(),
        }
    }

    fn ids(seqs: &[u64]) -> Vec<EntryId> {
        seqs.iter().map(|&s| id(s)).collect()
    }

    fn once(_: EntryId) -> Option<u64> {
        Some(1)
    }

    #[test]
    fn ok_acknowledges_the_whole_batch() {
        let p = plan(
            report(&[1, 2, 3], Outcome::Returned(HandlerResult::Ok)),
            once,
        );
        assert_eq!(p.ack, ids(&[1, 2, 3]));
        assert!(p.left_pending.is_empty() && p.failure.is_none() && p.dead_letter.is_empty());
        assert!(p.handler_ran);
    }

    #[test]
    fn partial_acknowledges_exactly_its_ids_deduplicated() {
        let result = HandlerResult::Partial(ids(&[3, 1, 3]));
        let p = plan(report(&[1, 2, 3], Outcome::Returned(result)), once);
        assert_eq!(p.ack, ids(&[3, 1]));
        assert_eq!(p.left_pending, ids(&[2]));
        assert_eq!(
            p.failure.as_deref(),
            Some("left unacknowledged by a Partial result")
        );
        assert!(!p.handler_failed);
    }

    #[test]
    fn empty_partial_acknowledges_nothing() {
        let p = plan(
            report(&[1, 2], Outcome::Returned(HandlerResult::Partial(vec![]))),
            once,
        );
        assert!(p.ack.is_empty());
        assert_eq!(p.left_pending, ids(&[1, 2]));
    }

    #[test]
    fn partial_with_a_foreign_id_acknowledges_nothing() {
        let result = HandlerResult::Partial(ids(&[1, 9]));
        let p = plan(report(&[1, 2], Outcome::Returned(result)), once);
        assert!(p.ack.is_empty());
        assert_eq!(p.left_pending, ids(&[1, 2]));
        assert_eq!(p.foreign, ids(&[9]));
        assert!(p.handler_failed);
        assert!(p.failure.unwrap().contains("not in the batch"));
    }

    #[test]
    fn err_leaves_the_whole_batch_pending_with_its_reason() {
        let result = HandlerResult::err("payment service down");
        let p = plan(report(&[1, 2], Outcome::Returned(result)), once);
        assert!(p.ack.is_empty());
        assert_eq!(p.left_pending, ids(&[1, 2]));
        assert_eq!(p.failure.as_deref(), Some("payment service down"));
        assert!(p.panicked.is_none());
        assert!(p.handler_failed);
    }

    #[test]
    fn panic_leaves_the_batch_pending_and_restarts() {
        let p = plan(report(&[1, 2], Outcome::Panicked("boom".into())), once);
        assert!(p.ack.is_empty());
        assert_eq!(p.left_pending, ids(&[1, 2]));
        assert_eq!(p.panicked.as_deref(), Some("boom"));
        assert_eq!(p.failure.as_deref(), Some("handler panicked: boom"));
    }

    #[test]
    fn timeout_leaves_the_batch_pending() {
        let p = plan(
            report(&[1], Outcome::TimedOut(Duration::from_secs(2))),
            once,
        );
        assert!(p.ack.is_empty());
        assert_eq!(p.left_pending, ids(&[1]));
        assert_eq!(
            p.failure.as_deref(),
            Some("handler ran past handler_timeout (2s)")
        );
    }

    #[test]
    fn nothing_decodable_means_the_handler_did_not_run() {
        let mut r = report(&[], Outcome::NotRun);
        let raw = RawEntry::new(id(4), vec![]);
        r.undecodable
            .push((raw, Some(2), DecodeError::new("missing field `order_id`")));
        let p = plan(r, once);
        assert!(!p.handler_ran);
        assert!(p.ack.is_empty() && p.left_pending.is_empty() && p.failure.is_none());
        assert_eq!(p.dead_letter.len(), 1);
        assert_eq!(p.dead_letter[0].id, id(4));
        assert_eq!(p.dead_letter[0].deliveries, Some(2));
        assert!(p.dead_letter[0].entry.is_some());
        assert!(p.dead_letter[0].reason.starts_with("cannot decode: "));
    }

    #[test]
    fn handler_dead_letters_are_moved_and_left_out_of_the_ack() {
        let mut r = report(&[1, 2, 3], Outcome::Returned(HandlerResult::Ok));
        r.dead_letters = vec![
            (id(2), "bad sku".into()),
            (id(2), "twice".into()),
            (id(7), "not ours".into()),
        ];
        let p = plan(r, |i| (i == id(2)).then_some(3));
        assert_eq!(p.ack, ids(&[1, 3]));
        assert_eq!(p.dead_letter.len(), 1);
        assert_eq!(p.dead_letter[0].deliveries, Some(3));
        assert_eq!(
            p.dead_letter[0].reason,
            "dead-lettered by the handler: bad sku"
        );
        assert_eq!(p.foreign, ids(&[7]));
    }

    #[test]
    fn handler_dead_letters_count_even_when_the_handler_fails() {
        let mut r = report(&[1, 2], Outcome::Returned(HandlerResult::err("down")));
        r.dead_letters = vec![(id(1), "bad".into())];
        let p = plan(r, once);
        assert!(p.ack.is_empty());
        assert_eq!(p.dead_letter.len(), 1);
        assert_eq!(p.left_pending, ids(&[2]));
    }

    #[test]
    fn retry_after_leaves_the_batch_pending_with_its_delay_and_is_no_failure() {
        let d = Duration::from_secs(2);
        let p = plan(
            report(&[1, 2], Outcome::Returned(HandlerResult::RetryAfter(d))),
            once,
        );
        assert!(p.ack.is_empty());
        assert_eq!(p.left_pending, ids(&[1, 2]));
        assert_eq!(p.retry, vec![(id(1), d), (id(2), d)]);
        assert!(!p.handler_failed);
        assert!(p.failure.unwrap().contains("retry after 2s"));
    }

    #[test]
    fn retry_requests_beside_ok_leave_only_their_entries_pending() {
        let mut r = report(&[1, 2, 3], Outcome::Returned(HandlerResult::Ok));
        let (a, b) = (Duration::from_secs(1), Duration::from_secs(5));
        r.retries = vec![(id(2), a), (id(2), b), (id(9), a), (id(3), b)];
        r.dead_letters = vec![(id(3), "bad".into())];
        let p = plan(r, once);
        assert_eq!(p.ack, ids(&[1]));
        assert_eq!(
            p.retry,
            vec![(id(2), a)],
            "first request wins; dead letter wins"
        );
        assert_eq!(p.left_pending, ids(&[2]));
        assert_eq!(p.dead_letter.len(), 1);
        assert_eq!(p.foreign, ids(&[9]));
        assert!(!p.handler_failed);
    }

    #[test]
    fn retry_requests_beside_partial_keep_partial_rest_for_xautoclaim() {
        let mut r = report(
            &[1, 2, 3],
            Outcome::Returned(HandlerResult::Partial(ids(&[1, 2]))),
        );
        let a = Duration::from_secs(1);
        r.retries = vec![(id(2), a)];
        let p = plan(r, once);
        assert_eq!(p.ack, ids(&[1]));
        assert_eq!(p.left_pending, ids(&[2, 3]));
        assert_eq!(p.retry, vec![(id(2), a)]);
    }

    #[test]
    fn backoff_applies_to_failures_by_delivery_count_never_to_partial() {
        let b =
            RetryBackoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).jitter(0.0);
        let counts = |i: EntryId| Some(i.seq);
        for outcome in [
            Outcome::Returned(HandlerResult::err("down")),
            Outcome::Panicked("boom".into()),
            Outcome::TimedOut(Duration::from_secs(1)),
        ] {
            let p = plan_with(report(&[1, 3], outcome), counts, Some(&b));
            assert_eq!(
                p.retry,
                vec![
                    (id(1), Duration::from_secs(1)),
                    (id(3), Duration::from_secs(4))
                ]
            );
        }
        let partial = Outcome::Returned(HandlerResult::Partial(ids(&[1])));
        assert!(plan_with(report(&[1, 3], partial), counts, Some(&b))
            .retry
            .is_empty());
        let err = Outcome::Returned(HandlerResult::err("down"));
        assert!(plan_with(report(&[1], err), counts, None).retry.is_empty());
    }

    #[test]
    fn sort_separates_tombstones_malformed_and_live_entries() {
        let items = vec![
            ReadItem::Entry(RawEntry::new(id(1), vec![])),
            ReadItem::Tombstone(id(2)),
            ReadItem::Malformed {
                id: Some(id(3)),
                reason: "not a list".into(),
            },
            ReadItem::Malformed {
                id: None,
                reason: "no id".into(),
            },
        ];
        let s = sort(items);
        assert_eq!(s.live.len(), 1);
        assert_eq!(s.tombstones, ids(&[2]));
        assert_eq!(s.malformed, vec![(id(3), "not a list".to_owned())]);
        assert_eq!(s.unidentified, vec!["no id".to_owned()]);
    }

    #[test]
    fn poison_is_more_deliveries_than_allowed() {
        assert!(!is_poison(5, 5));
        assert!(is_poison(6, 5));
        let reason = poison_reason(6, 5, None);
        assert!(reason.contains("delivered 6 times") && reason.contains("earlier process"));
        assert!(poison_reason(6, 5, Some("timeout")).ends_with("last error: timeout"));
    }
}
