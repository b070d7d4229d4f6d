//! The one contract of every reader kind (one stream's own [`Reader`](super::Reader), a shared
//! read's [`Subscription`](super::Subscription)), each mechanism implemented once: reads in
//! flight, [`Credits`] and the [`ReadPace`] the consumer sets, a reader's [`ReaderConfig`], and
//! the [`release`] of fetched entries nobody will handle. Waking blocked reads and waiting for a
//! stop is [`super::wake`].

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tracing::{info, warn};

use crate::entry::EntryId;
use crate::error::Error;
use crate::id::ConsumerId;
use crate::streams;

/// Reads on the wire at once while there is a backlog (the last reply was full). Two suffice to
/// keep the server busy: one executing, one queued. A consumer that has caught up keeps one: a
/// second read would only block behind the first, and measured, it adds about 50 µs to the
/// latency of every entry (the server serves the read queued behind an unblocked one first).
pub(super) const READS_IN_FLIGHT: usize = 2;

/// Reads to keep in flight after a reply whose fullest stream had `entries` entries, for reads
/// of `count`.
pub(super) fn depth_after(entries: usize, count: usize) -> usize {
    if entries >= count {
        READS_IN_FLIGHT
    } else {
        1
    }
}

/// Batches fetched ahead of the handler: the reads in flight plus one reply waiting, so the next
/// read can be written before the waiting reply is taken.
pub(crate) const FETCHED_AHEAD: usize = READS_IN_FLIGHT + 1;

/// How a reader reads from now on: `COUNT` of the reads it writes and how many batches it may fetch
/// ahead of the handler (1 to [`FETCHED_AHEAD`]). The consumer decides it
/// (`consumer::pacer`) after every batch its handler ran; every reader kind takes it as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadPace {
    pub(crate) count: usize,
    pub(crate) ahead: usize,
}

/// One stream's flow control, alike for every reader kind: a read that includes the stream is
/// written only against a credit, and a credit comes back when the consumer takes a batch (or at
/// once, when a reply had nothing for the stream). It starts with [`FETCHED_AHEAD`] credits; its
/// [`ReadPace`] holds `FETCHED_AHEAD - ahead` of them back, so at most `ahead` batches are on the
/// wire or fetched ahead of the one the handler works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Credits {
    credits: usize,
    pace: ReadPace,
}

impl Credits {
    /// Full credits and read-ahead, reads of `count`.
    pub(super) fn new(count: usize) -> Credits {
        Credits {
            credits: FETCHED_AHEAD,
            pace: ReadPace {
                count: count.max(1),
                ahead: FETCHED_AHEAD,
            },
        }
    }

    /// Credits usable now.
    pub(super) fn usable(&self) -> usize {
        self.credits
            .saturating_sub(FETCHED_AHEAD.saturating_sub(self.pace.ahead))
    }

    /// COUNT of the reads written from now on.
    pub(super) fn count(&self) -> usize {
        self.pace.count
    }

    /// Takes up to `n` usable credits (one per read written); returns how many.
    pub(super) fn take(&mut self, n: usize) -> usize {
        let n = n.min(self.usable());
        self.credits -= n;
        n
    }

    /// Gives one credit back: a batch was taken, or a read brought nothing for the stream.
    pub(super) fn give_back(&mut self) {
        self.credits = (self.credits + 1).min(FETCHED_AHEAD);
    }

    /// Sets COUNT and the read-ahead (1 to [`FETCHED_AHEAD`]); says whether more credits are
    /// usable now (a read may be written at once).
    pub(super) fn set_pace(&mut self, pace: ReadPace) -> bool {
        let before = self.usable();
        self.pace = ReadPace {
            count: pace.count.max(1),
            ahead: pace.ahead.clamp(1, FETCHED_AHEAD),
        };
        self.usable() > before
    }
}

/// How long a stop waits for a woken read's reply before it sends `CLIENT UNBLOCK` again (in case
/// the unblock reached the server before the read blocked).
pub(super) const UNBLOCK_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for the server to close its end after the reader closed its own.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Idle time given to released entries, so the next `XAUTOCLAIM` of any consumer takes them.
const RELEASE_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Releases entries fetched for `id` that nobody will handle now (a stop, a subscription
/// dropped, a stream that left a shared read): those still this consumer's are given
/// [`RELEASE_IDLE`] by `set_idle` (`streams::set_idle_if_owned` on the connection the caller
/// has), so the next `XAUTOCLAIM` anywhere takes them. Best effort: what cannot be released comes
/// back after `claim_min_idle` (or in the consumer's next replay).
pub(crate) async fn release<F, Fut, T, E>(id: &ConsumerId, ids: &[EntryId], set_idle: F)
where
    F: FnOnce(Duration) -> Fut,
    Fut: Future<Output = Result<Vec<T>, E>>,
    E: Display,
{
    if ids.is_empty() {
        return;
    }
    let stream = &*id.stream;
    match set_idle(RELEASE_IDLE).await {
        Ok(owned) => {
            info!(%stream, released = owned.len(), "released unhandled entries to the group")
        }
        Err(e) => {
            warn!(%stream, error = %e, entries = ids.len(), "could not release unhandled entries; they stay pending and come back after claim_min_idle")
        }
    }
}

/// [`release`] on `conn`, in one attempt.
pub(super) async fn release_on<C>(conn: &mut C, id: &ConsumerId, ids: &[EntryId])
where
    C: redis::aio::ConnectionLike + Send,
{
    let (stream, group, consumer) = (&*id.stream, &*id.group, &*id.consumer);
    release(id, ids, |idle| {
        streams::set_idle_if_owned(conn, stream, group, consumer, ids, idle)
    })
    .await;
}

/// What the settings of one reader are.
pub(crate) struct ReaderConfig {
    pub(crate) id: ConsumerId,
    pub(crate) count: usize,
    pub(crate) block: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) command_timeout: Duration,
}

impl ReaderConfig {
    pub(super) fn packed_read(&self, count: usize) -> Vec<u8> {
        streams::xreadgroup_cmd(
            &self.id.stream,
            &self.id.group,
            &self.id.consumer,
            count,
            Some(self.block),
            ">",
        )
        .get_packed_command()
    }

    pub(super) fn error(&self, e: redis::RedisError) -> Error {
        Error::from_redis(&self.id, "XREADGROUP", &self.id.stream, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(count: usize, ahead: usize) -> ReadPace {
        ReadPace { count, ahead }
    }

    #[test]
    fn credits_allow_reads_up_to_the_read_ahead() {
        let mut c = Credits::new(0);
        assert_eq!(c.count(), 1, "COUNT is at least 1");
        assert_eq!(c.usable(), FETCHED_AHEAD);
        assert!(
            !c.set_pace(pace(10, 1)),
            "a narrower read-ahead frees nothing"
        );
        assert_eq!(c.usable(), 1);
        assert_eq!(c.take(5), 1, "one read ahead only");
        assert_eq!(c.take(1), 0);
        c.give_back();
        assert_eq!(c.usable(), 1);
        // A wider read-ahead makes the held-back credits usable at once.
        assert!(c.set_pace(pace(10, FETCHED_AHEAD + 7)));
        assert_eq!(c.usable(), FETCHED_AHEAD, "clamped to FETCHED_AHEAD");
        assert!(
            !c.set_pace(pace(20, FETCHED_AHEAD)),
            "COUNT alone frees nothing"
        );
        assert_eq!(c.count(), 20);
    }

    #[test]
    fn a_credit_given_back_never_exceeds_the_full_read_ahead() {
        let mut c = Credits::new(10);
        c.give_back();
        assert_eq!(c.usable(), FETCHED_AHEAD);
        assert_eq!(c.take(usize::MAX), FETCHED_AHEAD);
        assert_eq!(c.usable(), 0);
        assert!(!c.set_pace(pace(10, 1)));
        (0..FETCHED_AHEAD).for_each(|_| c.give_back());
        assert_eq!(c.usable(), 1, "the pace holds the others back");
    }
}
