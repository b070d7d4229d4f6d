//! Waking a reader's blocked reads, alike for every reader kind: `CLIENT UNBLOCK` of its
//! connection through the control connection (on a cluster, routed to the node the reader is
//! connected to), and the wait of a stop until no read written before it is on the wire.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::contract::UNBLOCK_EVERY;
use crate::cluster::NodeAddress;
use crate::connection::Control;

/// What wakes one read connection's blocked reads and tells how far its replies have got.
#[derive(Debug)]
pub(super) struct Wake {
    /// The node the connection is to, on a cluster (where `CLIENT UNBLOCK` must be sent).
    node: Option<NodeAddress>,
    /// The connection's `CLIENT ID`, once connected; `None` without the permission to learn it
    /// or to unblock: blocked reads then return when BLOCK runs out.
    client_id: Mutex<Option<i64>>,
    /// Replies handed over so far, in the order the reads were written.
    replies: watch::Sender<u64>,
    /// Cancelled when the reader's task has ended and its connection is closed.
    finished: CancellationToken,
}

impl Wake {
    pub(super) fn new(node: Option<NodeAddress>) -> Wake {
        Wake {
            node,
            client_id: Mutex::new(None),
            replies: watch::channel(0).0,
            finished: CancellationToken::new(),
        }
    }

    fn id(&self) -> MutexGuard<'_, Option<i64>> {
        // A plain number: a panic elsewhere cannot leave it half-written.
        self.client_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection is up, with this `CLIENT ID` (`None` without the permission).
    pub(super) fn connected(&self, client_id: Option<i64>) {
        *self.id() = client_id;
    }

    pub(super) fn client_id(&self) -> Option<i64> {
        *self.id()
    }

    /// One more reply was handed over (its entries routed, or released).
    pub(super) fn replied(&self) {
        self.replies.send_modify(|n| *n += 1);
    }

    /// The reader's task has ended and its connection is closed.
    pub(super) fn finish(&self) {
        self.finished.cancel();
    }

    pub(super) fn finished(&self) -> &CancellationToken {
        &self.finished
    }

    /// Sends `CLIENT UNBLOCK` for the connection once. A refusal ([`Control::unblock_refused`]:
    /// no permission, a server without the command) ends the unblocking: reads then return when
    /// BLOCK runs out. Any other failure (a lost, slow or reconnecting control connection, a
    /// cluster connection without a connection to the node right now) is tried again next time.
    pub(super) async fn unblock(&self, control: &mut Control) {
        let Some(id) = self.client_id() else {
            return;
        };
        match control.unblock(self.node.as_ref(), id).await {
            Ok(_) => {}
            Err(e) if Control::unblock_refused(&e) => {
                debug!(error = %e, "CLIENT UNBLOCK not possible; blocked reads return when BLOCK runs out");
                self.connected(None);
            }
            Err(e) => debug!(error = %e, "CLIENT UNBLOCK failed; trying again"),
        }
    }

    /// Wakes the connection's blocked reads until `done(replies handed over)` holds or the
    /// reader's task has ended: `CLIENT UNBLOCK` now, again after every reply (the read
    /// pipelined behind a woken one may block next), and every [`UNBLOCK_EVERY`] (in case it
    /// reached the server before the read blocked).
    pub(super) async fn until(&self, control: &mut Control, done: impl Fn(u64) -> bool) {
        let mut replies = self.replies.subscribe();
        loop {
            if done(*replies.borrow_and_update()) || self.finished.is_cancelled() {
                return;
            }
            self.unblock(control).await;
            tokio::select! {
                _ = self.finished.cancelled() => return,
                // The sender lives in `self`: never closed while this waits.
                _ = replies.changed() => {}
                _ = tokio::time::sleep(UNBLOCK_EVERY), if self.client_id().is_some() => {}
            }
        }
    }
}
