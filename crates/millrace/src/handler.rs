//! The `Handler` trait users implement, its three results, closure and per-entry adapters, and the
//! type-erased runner that decodes entries and calls a handler safely.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::decode::{Decode, DecodeError};
use crate::entry::{
    Batch, BatchMeta, DeadLetterRequests, DeliveredEntry, Entry, EntryId, RawEntry, RetryRequests,
    Source,
};

/// Why a handler failed a batch or an entry. Built from any error type with `?` or `.into()`, or from
/// text with [`HandlerError::msg`].
pub struct HandlerError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl HandlerError {
    /// An error from a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        HandlerError {
            message: message.to_string(),
            source: None,
        }
    }

    /// The underlying error, if one was given.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError {
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .finish()
    }
}

/// What a handler returns for a batch, and so what millrace acknowledges.
///
/// | result | acknowledged (`XACK`) | the rest |
/// |---|---|---|
/// | `Ok` | every entry of the batch | — |
/// | `Partial(ids)` | exactly `ids` | stay pending, come back (own replay or `XAUTOCLAIM`) |
/// | `Err(reason)` | nothing | stay pending, come back (after the backoff when [`RetryBackoff`](crate::RetryBackoff) is set) |
/// | `RetryAfter(delay)` | nothing | stay pending, come back after `delay` |
///
/// An id in `Partial` that is not in the batch is never acknowledged: the batch is then treated as
/// failed (nothing acked) and a warning names the foreign id.
#[must_use = "the result decides which entries are acknowledged"]
#[derive(Debug)]
pub enum HandlerResult {
    /// Every entry was handled.
    Ok,
    /// Only these entries were handled.
    Partial(Vec<EntryId>),
    /// Nothing was handled.
    Err(HandlerError),
    /// Nothing was handled; every entry of the batch comes back after this delay (counted from
    /// when the handler returns), to this consumer, or to another one if this one is gone by then.
    /// The entries stay pending in Redis meanwhile, and count a delivery when they come back
    /// (`max_deliveries` applies). A delay above `claim_min_idle` is shortened to it, with a
    /// warning. To delay only some entries, see [`Batch::retry_after`](crate::Batch::retry_after).
    ///
    /// ```
    /// use std::time::Duration;
    /// use millrace::{Batch, HandlerResult, RawEntry};
    /// async fn handle(batch: Batch<RawEntry>) -> HandlerResult {
    ///     let throttled = true; // the downstream said 429
    ///     if throttled {
    ///         return HandlerResult::RetryAfter(Duration::from_secs(2));
    ///     }
    ///     HandlerResult::Ok
    /// }
    /// ```
    RetryAfter(Duration),
}

impl HandlerResult {
    /// `Err` with a reason.
    pub fn err(reason: impl fmt::Display) -> Self {
        HandlerResult::Err(HandlerError::msg(reason))
    }
}

impl<E: Into<HandlerError>> From<Result<(), E>> for HandlerResult {
    fn from(r: Result<(), E>) -> Self {
        match r {
            Ok(()) => HandlerResult::Ok,
            Err(e) => HandlerResult::Err(e.into()),
        }
    }
}

/// Handles batches of messages of type `M`.
///
/// Implement it with an `async fn`; or pass an async closure `|batch: Batch<M>| async { .. }`, which is a
/// handler through a blanket impl; or wrap a per-entry function with [`for_each_entry`](crate::for_each_entry).
///
/// ```
/// use millrace::{Batch, Handler, HandlerResult};
///
/// #[derive(serde::Deserialize)]
/// struct Order { order_id: u64, quantity: u32 }
///
/// struct Orders;
///
/// impl Handler<Order> for Orders {
///     async fn handle(&self, batch: Batch<Order>) -> HandlerResult {
///         for entry in &batch {
///             let _ = (entry.id, entry.message.order_id, entry.message.quantity);
///         }
///         HandlerResult::Ok
///     }
/// }
/// ```
///
/// A panic inside `handle` is caught: nothing of the batch is acknowledged and the consumer is
/// restarted by its supervisor, so the batch is handled again.
pub trait Handler<M>: Send + Sync + 'static {
    /// Handles one batch. Entries not acknowledged by the result stay pending and come back.
    fn handle(&self, batch: Batch<M>) -> impl Future<Output = HandlerResult> + Send;
}

impl<M, F, Fut> Handler<M> for F
where
    M: Send + 'static,
    F: Fn(Batch<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    fn handle(&self, batch: Batch<M>) -> impl Future<Output = HandlerResult> + Send {
        self(batch)
    }
}

/// How a handler call ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// No entry was decodable, so the handler was not called.
    NotRun,
    /// The handler returned.
    Returned(HandlerResult),
    /// The handler panicked.
    Panicked(String),
    /// The handler ran past `handler_timeout`.
    TimedOut(Duration),
}

/// What running one batch produced.
#[derive(Debug)]
pub(crate) struct RunReport {
    /// Ids handed to the handler, in order.
    pub(crate) handed: Vec<EntryId>,
    /// Entries that could not be decoded, with their delivery count and the reason.
    pub(crate) undecodable: Vec<(RawEntry, Option<u64>, DecodeError)>,
    pub(crate) outcome: Outcome,
    /// Entries the handler asked to dead-letter, with reasons.
    pub(crate) dead_letters: Vec<(EntryId, String)>,
    /// Entries the handler asked to have back after a delay.
    pub(crate) retries: Vec<(EntryId, Duration)>,
}

/// A handler with its message type erased, so one supervisor runs consumers of many types.
pub(crate) trait BatchRunner: Send + Sync + 'static {
    fn type_name(&self) -> &'static str;
    fn run(
        &self,
        meta: BatchMeta,
        source: Source,
        items: Vec<DeliveredEntry>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'_, RunReport>;
}

pub(crate) struct TypedRunner<M, H> {
    handler: H,
    _m: PhantomData<fn() -> M>,
}

impl<M, H> TypedRunner<M, H> {
    pub(crate) fn new(handler: H) -> Self {
        TypedRunner {
            handler,
            _m: PhantomData,
        }
    }
}

impl<M: Decode, H: Handler<M>> BatchRunner for TypedRunner<M, H> {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<H>()
    }

    fn run(
        &self,
        meta: BatchMeta,
        source: Source,
        items: Vec<DeliveredEntry>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'_, RunReport> {
        let mut entries = Vec::with_capacity(items.len());
        let mut handed = Vec::with_capacity(items.len());
        let mut undecodable = Vec::new();
        for (raw, deliveries) in items {
            let id = raw.id;
            match M::decode(raw) {
                Ok(message) => {
                    handed.push(id);
                    entries.push(Entry {
                        id,
                        deliveries,
                        message,
                    });
                }
                Err((raw, err)) => undecodable.push((raw, deliveries, err)),
            }
        }
        async move {
            let dead_letters = DeadLetterRequests::default();
            let retries = RetryRequests::default();
            let report = |outcome| RunReport {
                handed,
                undecodable,
                outcome,
                dead_letters: dead_letters.take(),
                retries: retries.take(),
            };
            if entries.is_empty() {
                return report(Outcome::NotRun);
            }
            let batch = Batch {
                meta,
                source,
                entries,
                dead_letters: dead_letters.clone(),
                retries: retries.clone(),
            };
            // The handler is called inside the guarded future, so a panic before its first await
            // (in a closure body, say) is caught too.
            let call =
                AssertUnwindSafe(async move { self.handler.handle(batch).await }).catch_unwind();
            let result = match timeout {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(r) => r,
                    Err(_) => return report(Outcome::TimedOut(limit)),
                },
                None => call.await,
            };
            report(match result {
                Ok(r) => Outcome::Returned(r),
                Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
            })
        }
        .boxed()
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}
