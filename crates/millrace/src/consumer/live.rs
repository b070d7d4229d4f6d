//! The live loop: new entries (`XREADGROUP … >`) from the consumer's reader, handed to the handler
//! batch by batch, with the claim and gauge timers in between, and the graceful stop.

use std::time::Instant;

use tracing::warn;

use super::cohort::Cohort;
use super::feed::Feed;
use super::Consumer;
use crate::connection::Node;
use crate::entry::{EntryId, Source};
use crate::error::Result;
use crate::health::ConsumerState;
use crate::reader::ReaderConfig;
use crate::streams::ReadItem;

impl Consumer {
    /// A read succeeded: health, backoff and the read size learn of it.
    pub(super) fn read_succeeded(&mut self) {
        self.stats.read_ok();
        if let Some(outage) = self.outage.take() {
            outage.resumed();
        } else if self.retry_attempt > 0 {
            warn!(
                failed_attempts = self.retry_attempt,
                "reading again after a failure; the consumer has recovered"
            );
        }
        self.retry_attempt = 0;
        self.pacer.read_ok();
    }

    /// Reads new entries through the reader, which keeps reads in flight while batches are
    /// handled; batches come in the order the reads were sent.
    pub(super) async fn live(&mut self, node: &Node) -> Result<()> {
        let config = ReaderConfig {
            id: self.id.clone(),
            count: self.pacer.count(),
            block: self.opts.block,
            read_timeout: self.opts.effective_read_timeout(),
            command_timeout: self.backend.command_timeout(),
        };
        // A stop while the reader connects (say, to an unresponsive server) need not wait for it.
        let mut reader = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Ok(()),
            r = Feed::start(&self.backend, node, config, self.cohort.as_deref().map(Cohort::readers)) => r?,
        };
        reader.set_pace(self.pacer.pace());
        self.stats.set_state(ConsumerState::Running);
        loop {
            if Instant::now() >= self.reclaimer.next_tick() {
                self.claim_tick().await?;
            }
            if Instant::now() >= self.gauges.next_refresh() {
                self.gauges.refresh().await;
            }
            let mut timers = self.reclaimer.next_tick().min(self.gauges.next_refresh());
            if let Some(due) = self.retry_due_at() {
                if due <= Instant::now() {
                    self.retry_due().await?;
                    continue;
                }
                timers = timers.min(due);
            }
            let items = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return self.stop_reading(reader, Vec::new()).await,
                r = reader.next() => r?,
                // The XACK in flight returned: send the ids waiting behind it now, not with the next
                // batch, and end the session if it failed (its ids are retried by the recovery).
                r = self.acker.returned(), if self.acker.is_acking() => {
                    r?;
                    continue;
                }
                _ = tokio::time::sleep_until(timers.into()) => continue,
            };
            self.read_succeeded();
            if items.is_empty() {
                continue;
            }
            if self.cancel.is_cancelled() {
                return self.stop_reading(reader, items).await;
            }
            let read = items.len();
            let handled = self
                .handle(items, Source::New, Some(reader.sent_after()))
                .await?;
            // Only batches the handler ran tell how fast it is: a batch whose entries were all
            // skipped says nothing, and must not widen the read-ahead after slow ones.
            if let Some(took) = handled.handler_took {
                let pace = self.pacer.handled(read, handled.handed, took);
                reader.set_pace(pace);
            }
            self.acker.ack_behind(handled.ack).await?;
            if self.cancel.is_cancelled() {
                return self.stop_reading(reader, Vec::new()).await;
            }
        }
    }

    /// Flushes the acks, stops the reader (waking its blocked reads with `CLIENT UNBLOCK` when
    /// permitted), and releases the entries fetched but not handled (`unhandled` plus what the
    /// last reads returned) to the other consumers.
    async fn stop_reading(&mut self, reader: Feed, mut unhandled: Vec<ReadItem>) -> Result<()> {
        self.acker.flush().await?;
        self.stats.set_state(ConsumerState::Stopping);
        unhandled.extend(reader.stop(self.client.conn()).await);
        let ids: Vec<EntryId> = unhandled.iter().filter_map(ReadItem::id).collect();
        self.reclaimer.release(&ids).await;
        Ok(())
    }

    /// One claim tick: a bounded number of `XAUTOCLAIM` calls from the kept cursor, each claimed
    /// batch handled and acknowledged before the next call.
    pub(super) async fn claim_tick(&mut self) -> Result<()> {
        self.reclaimer.begin_tick().await?;
        for _ in 0..self.reclaimer.calls_per_tick() {
            let claimed = self.reclaimer.claim_once().await?;
            self.failures.forget(&claimed.deleted);
            if !claimed.items.is_empty() {
                let handled = self.handle(claimed.items, Source::Claimed, None).await?;
                self.acker.ack(handled.ack).await?;
            }
            if claimed.wrapped || self.cancel.is_cancelled() {
                break;
            }
        }
        Ok(())
    }
}
