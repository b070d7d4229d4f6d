//! Where the live loop's new entries come from: the consumer's own [`Reader`], with a socket of
//! its own, or, for a stream of a multi-stream consumer, its [`Subscription`] to the read its
//! (group, consumer) shares on the stream's server (on a cluster: master and slot).

use std::time::Instant;

use crate::connection::{Backend, Control, Node};
use crate::error::Result;
use crate::reader::{ReadPace, Reader, ReaderConfig, SharedReaders, Subscription};
use crate::streams::ReadItem;

/// The live loop's source of new entries; every method keeps [`Reader`]'s contract.
#[derive(Debug)]
pub(crate) enum Feed {
    /// A reader with a connection of its own.
    Own(Reader),
    /// This stream's place in a shared read.
    Shared(Subscription),
}

impl Feed {
    /// Starts reading for `config.id` on `node`: through the shared read of its (group,
    /// consumer) in `shared` (its cohort's), else on a connection of its own.
    pub(crate) async fn start(
        backend: &Backend,
        node: &Node,
        config: ReaderConfig,
        shared: Option<&SharedReaders>,
    ) -> Result<Feed> {
        if let Some(readers) = shared {
            return readers
                .subscribe(backend, node, config)
                .await
                .map(Feed::Shared);
        }
        Reader::start(backend, node, config).await.map(Feed::Own)
    }

    /// The next batch of this stream (from its own reader, empty after a BLOCK timeout).
    pub(crate) async fn next(&mut self) -> Result<Vec<ReadItem>> {
        match self {
            Feed::Own(reader) => reader.next().await,
            Feed::Shared(subscription) => subscription.next().await,
        }
    }

    /// The earliest moment the read of the last batch can have been sent: see [`Reader::sent_after`].
    pub(crate) fn sent_after(&self) -> Instant {
        match self {
            Feed::Own(reader) => reader.sent_after(),
            Feed::Shared(subscription) => subscription.sent_after(),
        }
    }

    /// Sets COUNT and the read-ahead for the reads written from now on.
    pub(crate) fn set_pace(&self, pace: ReadPace) {
        match self {
            Feed::Own(reader) => reader.set_pace(pace),
            Feed::Shared(subscription) => subscription.set_pace(pace),
        }
    }

    /// Stops reading and returns the entries fetched but not taken, for the caller to release.
    pub(crate) async fn stop(self, control: &mut Control) -> Vec<ReadItem> {
        match self {
            Feed::Own(reader) => reader.stop(control).await,
            Feed::Shared(subscription) => subscription.stop(control).await,
        }
    }
}
