//! What every reader kind keeps alike (one stream's own [`Reader`](super::Reader), a shared read's
//! [`Subscription`](super::Subscription)): reads in flight and credits, the [`ReadPace`] the
//! consumer sets, a reader's [`ReaderConfig`], and the timings of a stop.

use std::time::Duration;

use crate::error::Error;
use crate::id::ConsumerId;
use crate::streams;

/// Reads on the wire at once while there is a backlog (the last reply was full). Two suffice to
/// keep the server busy: one executing, one queued. A consumer that has caught up keeps one: a
/// second read would only block behind the first, and measured, it adds about 50 µs to the
/// latency of every entry (the server serves the read queued behind an unblocked one first).
pub(super) const READS_IN_FLIGHT: usize = 2;

/// Reads to keep in flight after a reply with `entries` entries, for reads of `count`.
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

/// How long a stop waits for a woken read's reply before it sends `CLIENT UNBLOCK` again (in case
/// the unblock reached the server before the read blocked).
pub(super) const UNBLOCK_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for the server to close its end after the reader closed its own.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(1);

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
