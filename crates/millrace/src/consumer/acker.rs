//! The one ack path of a consumer: every acknowledgement (live batches, replays, claims, deleted
//! entries) goes through here, with one retry policy. Acks of live batches are coalesced: one `XACK`
//! is in flight at a time, and the ids of batches handled meanwhile wait for it and go together.

use tokio::task::JoinHandle;

use super::client::ConsumerClient;
use super::stats::Stats;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::streams;

#[derive(Debug)]
pub(crate) struct Acker {
    client: ConsumerClient,
    stats: Stats,
    /// Most ids that wait for the `XACK` in flight (see [`Acker::ack_behind`]).
    hold_limit: usize,
    in_flight: Option<JoinHandle<Result<()>>>,
    held: Vec<EntryId>,
}

impl Acker {
    /// An acker for batches of up to `count` entries. At most two batches' ids wait for the `XACK`
    /// in flight: this bounds what a crash leaves handled but unacknowledged (see
    /// `docs/semantics.md`, where duplicates come from).
    pub(crate) fn new(client: ConsumerClient, stats: Stats, count: usize) -> Self {
        Acker {
            client,
            stats,
            hold_limit: (count * 2).min(10_000),
            in_flight: None,
            held: Vec::new(),
        }
    }

    /// Acknowledges `ids` and waits until every acknowledgement so far has landed.
    pub(crate) async fn ack(&mut self, ids: Vec<EntryId>) -> Result<()> {
        self.held.extend(ids);
        self.flush().await
    }

    /// Acknowledges without waiting: when an `XACK` is in flight, `ids` wait for it (up to the hold
    /// limit; past it, this waits) and go with the next one. With small batches the loop therefore
    /// never waits for an ack round trip. A failed `XACK` fails the session (the entries come back
    /// through the replay).
    pub(crate) async fn ack_behind(&mut self, ids: Vec<EntryId>) -> Result<()> {
        if ids.is_empty() && self.held.is_empty() {
            return Ok(());
        }
        let busy = self.in_flight.as_ref().is_some_and(|t| !t.is_finished());
        if busy && self.held.len() + ids.len() <= self.hold_limit {
            self.held.extend(ids);
            return Ok(());
        }
        // Idle, or the hold is full: send what is held (waiting for the XACK in flight first) and
        // let these ids follow. In flight and held each stay within the limit.
        if busy {
            self.send_held().await?;
            self.held.extend(ids);
            return Ok(());
        }
        self.held.extend(ids);
        self.send_held().await
    }

    /// Whether ids wait for an `XACK` in flight (then [`Acker::returned`] is worth awaiting).
    pub(crate) fn is_holding(&self) -> bool {
        self.in_flight.is_some() && !self.held.is_empty()
    }

    /// Waits for the `XACK` in flight to return, then sends the ids held behind it.
    pub(crate) async fn returned(&mut self) -> Result<()> {
        self.send_held().await
    }

    /// Sends every held id and waits until all have landed.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.send_held().await?;
        self.wait_in_flight().await
    }

    /// Waits for the `XACK` in flight, then sends the held ids in one `XACK`, in the background.
    async fn send_held(&mut self) -> Result<()> {
        self.wait_in_flight().await?;
        if self.held.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.held);
        let (client, stats) = (self.client.clone(), self.stats.clone());
        self.in_flight = Some(tokio::spawn(async move {
            let id = client.id();
            let (stream, group) = (&*id.stream, &*id.group);
            client
                .retry("XACK", stream, |mut c| {
                    let ids = &ids;
                    async move { streams::xack(&mut c, stream, group, ids).await }
                })
                .await?;
            stats.acked(ids.len());
            Ok(())
        }));
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<()> {
        match self.in_flight.take() {
            None => Ok(()),
            Some(task) => task.await.unwrap_or_else(|join| {
                Err(Error::Internal {
                    consumer: self.client.id().clone(),
                    message: format!("ack task failed: {join}"),
                })
            }),
        }
    }
}
