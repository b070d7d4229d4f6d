//! Per-entry handler adapters: [`for_each_entry`] (every entry, `Partial` of those that succeeded)
//! and [`for_each_entry_in_order`] (up to the first failure, the rest held back).

use std::fmt;
use std::future::Future;

use crate::entry::{Batch, Entry};
use crate::handler::{Handler, HandlerError, HandlerResult};

/// A batch handler built from a function of one entry; see [`for_each_entry`] and
/// [`for_each_entry_in_order`].
pub struct EachEntry<F> {
    f: F,
    after_failure: AfterFailure,
}

/// The handler [`for_each_entry_in_order`] builds: an [`EachEntry`] that stops at the first failure.
pub type EachEntryInOrder<F> = EachEntry<F>;

impl<F> fmt::Debug for EachEntry<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.after_failure {
            AfterFailure::GoOn => "EachEntry",
            AfterFailure::HoldBack => "EachEntryInOrder",
        })
    }
}

/// What a failed entry does to the entries after it in the batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterFailure {
    /// They are handled all the same.
    GoOn,
    /// They are not handled: left pending.
    HoldBack,
}

/// Turns a per-entry function into a batch handler that builds `Partial` itself: entries whose
/// function returned `Ok` are acknowledged, the others stay pending. Entries run one after another.
///
/// ```
/// use millrace::{for_each_entry, ConsumerSpec, Entry, HandlerError};
///
/// #[derive(serde::Deserialize)]
/// struct Event { user_id: u64 }
///
/// let spec = ConsumerSpec::new("events", "g", "c").handler(for_each_entry(|entry: Entry<Event>| async move {
///     if entry.message.user_id == 0 {
///         return Err(HandlerError::msg("user 0 is not allowed"));
///     }
///     Ok(())
/// }));
/// # let _ = spec;
/// ```
pub fn for_each_entry<F>(f: F) -> EachEntry<F> {
    EachEntry {
        f,
        after_failure: AfterFailure::GoOn,
    }
}

/// Like [`for_each_entry`], but the first entry that fails ends the batch: the entries after it are
/// not handled (held back: left pending, with a DEBUG line), so no entry is handled before an
/// earlier one that failed. The result is `Partial` of the entries handled before the failure, or
/// `Err` when the first entry failed (so `retry_backoff` applies). Meant for keyed concurrency,
/// where a batch holds one key's entries in stream order
/// ([`ConsumerOptions::key_concurrency`](crate::ConsumerOptions::key_concurrency)).
///
/// ```
/// use millrace::{for_each_entry_in_order, ConsumerSpec, Entry, HandlerError, RawEntry};
///
/// let spec = ConsumerSpec::new("accounts", "g", "c")
///     .key_concurrency(16)
///     .key_field("account".to_owned())
///     .handler(for_each_entry_in_order(|entry: Entry<RawEntry>| async move {
///         if entry.message.get("amount").is_none() {
///             return Err(HandlerError::msg("no amount"));
///         }
///         Ok(())
///     }));
/// # let _ = spec;
/// ```
pub fn for_each_entry_in_order<F>(f: F) -> EachEntryInOrder<F> {
    EachEntry {
        f,
        after_failure: AfterFailure::HoldBack,
    }
}

impl<M, F, Fut, E> Handler<M> for EachEntry<F>
where
    M: Send + 'static,
    F: Fn(Entry<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<HandlerError> + Send,
{
    async fn handle(&self, batch: Batch<M>) -> HandlerResult {
        each(&self.f, batch, self.after_failure).await
    }
}

/// Runs `f` on the batch's entries one after another: `Ok` when every entry succeeded, `Err` (the
/// first failure) when none did, else `Partial` of those that did.
async fn each<M, F, Fut, E>(f: &F, batch: Batch<M>, after_failure: AfterFailure) -> HandlerResult
where
    F: Fn(Entry<M>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<HandlerError>,
{
    let total = batch.entries.len();
    let mut done = Vec::with_capacity(total);
    let mut first_error: Option<HandlerError> = None;
    for entry in batch.entries {
        let id = entry.id;
        let Err(e) = f(entry).await else {
            done.push(id);
            continue;
        };
        let e: HandlerError = e.into();
        if after_failure == AfterFailure::HoldBack {
            let held_back = total - done.len() - 1;
            tracing::debug!(entry_id = %id, error = %e, held_back, "entry failed; the entries after it are held back (left pending, not handled)");
            first_error = Some(e);
            break;
        }
        tracing::debug!(entry_id = %id, error = %e, "entry failed");
        first_error.get_or_insert(e);
    }
    match first_error {
        None => HandlerResult::Ok,
        Some(e) if done.is_empty() => HandlerResult::Err(e),
        Some(_) => HandlerResult::Partial(done),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::entry::{BatchMeta, EntryId, Source};

    fn batch(n: u64) -> Batch<u64> {
        let meta = BatchMeta {
            stream: "s".into(),
            group: "g".into(),
            consumer: "c".into(),
        };
        let entries = (1..=n)
            .map(|i| Entry {
                id: EntryId::new(1, i),
                deliveries: Some(1),
                message: i,
            })
            .collect();
        Batch::new(meta, Source::New, entries)
    }

    /// A function of one entry that fails on the entries `fail` holds, counting its calls.
    fn failing_at(
        fail: &'static [u64],
        calls: &Arc<AtomicUsize>,
    ) -> impl Fn(Entry<u64>) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
    {
        let calls = calls.clone();
        move |e: Entry<u64>| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if fail.contains(&e.message) {
                Err(HandlerError::msg("no"))
            } else {
                Ok(())
            })
        }
    }

    async fn run_failing_at(fail: &'static [u64]) -> (HandlerResult, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let result = for_each_entry_in_order(failing_at(fail, &calls))
            .handle(batch(3))
            .await;
        (result, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn every_entry_runs_and_those_that_succeeded_are_acknowledged() {
        let ids = |ns: &[u64]| ns.iter().map(|n| EntryId::new(1, *n)).collect::<Vec<_>>();
        for (fail, want) in [
            (&[][..], None),
            (&[2][..], Some(ids(&[1, 3]))),
            (&[1, 3][..], Some(ids(&[2]))),
        ] {
            let calls = Arc::new(AtomicUsize::new(0));
            let r = for_each_entry(failing_at(fail, &calls))
                .handle(batch(3))
                .await;
            assert_eq!(calls.load(Ordering::SeqCst), 3, "every entry ran");
            match want {
                None => assert!(matches!(r, HandlerResult::Ok)),
                Some(want) => assert!(matches!(r, HandlerResult::Partial(ids) if ids == want)),
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let r = for_each_entry(failing_at(&[1, 2, 3], &calls))
            .handle(batch(3))
            .await;
        assert!(matches!(r, HandlerResult::Err(_)), "none succeeded");
    }

    #[tokio::test]
    async fn in_order_stops_at_the_first_failure_and_holds_back_the_rest() {
        let (r, calls) = run_failing_at(&[2]).await;
        assert!(matches!(r, HandlerResult::Partial(ids) if ids == vec![EntryId::new(1, 1)]));
        assert_eq!(calls, 2, "the third entry was not handled");
        let (r, calls) = run_failing_at(&[1]).await;
        assert!(matches!(r, HandlerResult::Err(_)));
        assert_eq!(calls, 1);
        let (r, calls) = run_failing_at(&[9]).await;
        assert!(matches!(r, HandlerResult::Ok));
        assert_eq!(calls, 3);
    }
}
