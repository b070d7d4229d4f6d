//! One stream's place in a shared read, with the single reader's contract: its parts in the order
//! the reads were written, its credits returned as it takes them, its pace set by its consumer, and a stop that returns what it
//! fetched and did not take.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::state::Delivery;
use super::{ended, lock, release, SharedRead};
use crate::connection::Control;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::id::ConsumerId;
use crate::protocol;
use crate::reader::{ReadPace, UNBLOCK_EVERY};
use crate::streams::ReadItem;

/// One stream's place in a shared read (see the [module docs](super)). Dropping it without
/// [`Subscription::stop`] (a failed session, a panicking handler) leaves the read at once; parts
/// it had not taken are released to the group, and if it was the last subscriber the read's
/// socket closes at once, as a dropped [`Reader`](crate::reader::Reader)'s does.
pub(crate) struct Subscription {
    read: Arc<SharedRead>,
    token: u64,
    rx: mpsc::UnboundedReceiver<Delivery>,
    id: ConsumerId,
    sent_after: Instant,
    /// Set once the subscription has left the read.
    left: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("consumer", &self.id)
            .field("read", &self.read.key)
            .finish()
    }
}

impl Subscription {
    pub(super) fn new(
        read: Arc<SharedRead>,
        token: u64,
        rx: mpsc::UnboundedReceiver<Delivery>,
        id: ConsumerId,
    ) -> Subscription {
        Subscription {
            read,
            token,
            rx,
            id,
            sent_after: Instant::now(),
            left: false,
        }
    }

    /// This stream's next batch, in the order the reads were written. A read that brought nothing
    /// for this stream returns nothing here, except that after a BLOCK's time without entries an
    /// empty batch says the reads go well (as a single reader's BLOCK timeout does).
    pub(crate) async fn next(&mut self) -> Result<Vec<ReadItem>> {
        match self.rx.recv().await {
            Some(Delivery::Part { frame, at, sent }) => {
                self.sent_after = sent;
                if self.read.state().taken(&self.id.stream, self.token) {
                    self.read.notify.notify_one();
                }
                self.parse(&frame, at)
            }
            Some(Delivery::Quiet) => Ok(Vec::new()),
            Some(Delivery::Failed(e)) => Err(e),
            None => Err(ended(&self.id)),
        }
    }

    fn parse(&self, frame: &[u8], at: usize) -> Result<Vec<ReadItem>> {
        protocol::parse_stream_entries(frame, at)
            .map_err(|e| Error::from_redis(&self.id, "XREADGROUP", &self.id.stream, e))
    }

    /// When the read of the batch last returned by [`Subscription::next`] was written: its
    /// entries have been pending at most since then.
    pub(crate) fn sent_after(&self) -> Instant {
        self.sent_after
    }

    /// Sets this stream's COUNT and read-ahead for the reads written from now on (a read's COUNT
    /// is the largest of its streams', within the reply budget; a wider read-ahead may wake the
    /// read for this stream).
    pub(crate) fn set_pace(&self, pace: ReadPace) {
        if self
            .read
            .state()
            .set_pace(&self.id.stream, self.token, pace)
        {
            self.read.notify.notify_one();
        }
    }

    /// Leaves the read and returns the entries fetched for this stream and not taken, for the
    /// caller to release. No read on the wire names the stream once this returns, so an entry
    /// added after is never delivered to this consumer: reads still on the wire that include it
    /// are woken with `CLIENT UNBLOCK` (when permitted; else they return when BLOCK runs out)
    /// and this waits until their replies are routed, the entries they brought for this stream
    /// released by the read. The last subscriber to leave also stops the read and waits until
    /// its connection is closed.
    pub(crate) async fn stop(mut self, control: &mut Control) -> Vec<ReadItem> {
        let (last, on_the_wire) = self.leave();
        let mut fetched = Vec::new();
        while let Ok(delivery) = self.rx.try_recv() {
            if let Delivery::Part { frame, at, .. } = delivery {
                match self.parse(&frame, at) {
                    Ok(items) => fetched.extend(items),
                    Err(e) => {
                        debug!(error = %e, "a part could not be parsed; its entries stay pending")
                    }
                }
            }
        }
        if last {
            self.wait_ended(control).await;
        } else if let Some(reads) = on_the_wire {
            self.wait_routed(control, reads).await;
        }
        fetched
    }

    /// The `CLIENT ID` of the read's connection, for tests.
    #[cfg(test)]
    pub(super) fn client_id(&self) -> Option<i64> {
        self.read.client_id()
    }

    /// Wakes the read's blocked reads until its task has ended.
    async fn wait_ended(&self, control: &mut Control) {
        let mut client_id = self.read.client_id();
        loop {
            if let Some(id) = client_id {
                if let Err(e) = control.unblock(self.read.node.as_ref(), id).await {
                    // Only a refusal is for good; anything else is tried again.
                    client_id = client_id.filter(|_| !Control::unblock_refused(&e));
                }
            }
            tokio::select! {
                _ = self.read.finished.cancelled() => return,
                _ = tokio::time::sleep(UNBLOCK_EVERY), if client_id.is_some() => {}
            }
        }
    }

    async fn wait_routed(&self, control: &mut Control, reads: u64) {
        wait_routed(&self.read, control, reads).await;
    }

    /// Removes this stream's lane; the last one out stops the read. Returns whether it was last,
    /// and the reads to wait for if the stream was in a read on the wire.
    fn leave(&mut self) -> (bool, Option<u64>) {
        if self.left {
            return (false, None);
        }
        self.left = true;
        let (last, on_the_wire) = {
            let mut state = self.read.state();
            let (last, on_the_wire) = state.leave(&self.id.stream, self.token);
            if last {
                state.stop = true;
            }
            (last, on_the_wire)
        };
        if last {
            self.read.unregister();
        }
        self.read.notify.notify_one();
        (last, on_the_wire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let (last, on_the_wire) = self.leave();
        if last {
            // As a dropped single reader: the socket closes at once, so the server drops the
            // blocked read instead of delivering entries to a read nobody listens to.
            if let Some(task) = super::lock(&self.read.task).take() {
                task.abort();
            }
        }
        let mut ids: Vec<EntryId> = Vec::new();
        while let Ok(delivery) = self.rx.try_recv() {
            if let Delivery::Part { frame, at, .. } = delivery {
                if let Ok(items) = self.parse(&frame, at) {
                    ids.extend(items.iter().filter_map(ReadItem::id));
                }
            }
        }
        // The last one out closed the read's socket: no read names the stream any more.
        let on_the_wire = on_the_wire.filter(|_| !last);
        if ids.is_empty() && on_the_wire.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            debug!(
                entries = ids.len(),
                "no runtime to release untaken entries; they stay pending for the consumer"
            );
            return;
        };
        // Until this is done the stream is not quiet: a replay of it waits (see
        // `SharedReaders::quieting`), so the release never lands on entries the replay took.
        let quiet = Arc::new(CancellationToken::new());
        lock(&self.read.quieting).insert(self.id.clone(), quiet.clone());
        let (read, id) = (self.read.clone(), self.id.clone());
        runtime.spawn(async move {
            let mut control = read.control.clone();
            release(&mut control, &id, &ids).await;
            if let Some(reads) = on_the_wire {
                wait_routed(&read, &mut control, reads).await;
            }
            let mut quieting = lock(&read.quieting);
            if quieting.get(&id).is_some_and(|q| Arc::ptr_eq(q, &quiet)) {
                quieting.remove(&id);
            }
            quiet.cancel();
        });
    }
}

/// Wakes `read`'s blocked reads until `reads` reads have been routed (or the read ended): then
/// no read written before names a stream that left.
async fn wait_routed(read: &SharedRead, control: &mut Control, reads: u64) {
    let mut routed = read.routed.subscribe();
    let mut client_id = read.client_id();
    loop {
        if *routed.borrow_and_update() >= reads {
            return;
        }
        if let Some(id) = client_id {
            if let Err(e) = control.unblock(read.node.as_ref(), id).await {
                client_id = client_id.filter(|_| !Control::unblock_refused(&e));
            }
        }
        tokio::select! {
            _ = read.finished.cancelled() => return,
            changed = routed.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(UNBLOCK_EVERY), if client_id.is_some() => {}
        }
    }
}
