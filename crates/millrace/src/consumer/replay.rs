//! The own-PEL replay: after every (re)start a consumer first reads back the entries still pending
//! for it, with an advancing cursor, so each is handled once per replay and entries its handler
//! leaves pending are left to `XAUTOCLAIM` instead of looping. The replay reads over a connection
//! of the consumer's own, opened for it: an entry too large for the server's output buffer closes
//! that connection only, and once it has used up `max_deliveries` it is dead-lettered by id.

use tracing::{debug, warn};

use super::outcome::DeadLetterOrder;
use super::Consumer;
use crate::connection::Node;
use crate::entry::{EntryId, Source};
use crate::error::{Error, Result};
use crate::reader::PendingReader;
use crate::streams::{self, ReadItem};

impl Consumer {
    pub(super) async fn replay_own_pending(&mut self, node: &Node) -> Result<()> {
        // The streams of a multi-stream consumer take turns, so a reconnect of a thousand
        // streams does not open a thousand replay connections at once.
        let cohort = self.cohort.clone();
        let _turn = match &cohort {
            Some(cohort) => {
                // An earlier subscription of this stream may still hand entries back (or a read
                // on the wire still name the stream): wait, so none lands on what this replay
                // takes.
                if let Some(quiet) = cohort.readers().quieting(&self.id) {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        _ = quiet.cancelled() => {}
                    }
                }
                // Nothing pending for this consumer (a fresh group, a clean stop): no replay
                // connection to open. One command on the control connection, which the streams
                // share, instead of a connection each, in turns.
                if self.nothing_pending().await {
                    return Ok(());
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(()),
                    turn = cohort.replay_turn() => turn,
                }
            }
            None => None,
        };
        let mut own: Option<PendingReader> = None;
        let result = self.replay_over(node, &mut own).await;
        if let Some(conn) = own {
            conn.close().await;
        }
        result
    }

    /// Whether nothing is pending for this consumer on its stream (`XPENDING key group - + 1
    /// consumer`). `false` when unsure (an error): the replay then finds out.
    async fn nothing_pending(&mut self) -> bool {
        let id = self.id.clone();
        let (stream, group, consumer) = (&*id.stream, &*id.group, &*id.consumer);
        let rows: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(consumer)
            .query_async(self.client.conn())
            .await;
        matches!(rows, Ok(redis::Value::Array(rows)) if rows.is_empty())
    }

    /// The replay loop; `own` holds the replay's connection, (re)opened when needed.
    async fn replay_over(&mut self, node: &Node, own: &mut Option<PendingReader>) -> Result<()> {
        let mut cursor = EntryId::MIN;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let conn = match own {
                Some(conn) => conn,
                None => own.insert(
                    PendingReader::open(&self.backend, node)
                        .await
                        .map_err(|e| self.client.error("CONNECT", &self.id.stream, e))?,
                ),
            };
            let cmd = streams::xreadgroup_cmd(
                &self.id.stream,
                &self.id.group,
                &self.id.consumer,
                self.pacer.count(),
                None,
                &cursor.to_string(),
            );
            let items = match conn.read(&cmd).await {
                Ok(items) => items,
                Err(e) if e.code() == Some("NOGROUP") && !self.opts.create_group => {
                    return Err(self.group_missing(e.to_string()))
                }
                Err(e) if cut_off(&e) && self.pacer.count() == 1 => {
                    *own = None;
                    if self.dead_letter_oversized(cursor).await? {
                        continue;
                    }
                    return Err(self.client.error("XREADGROUP", &self.id.stream, e));
                }
                Err(e) => return Err(self.client.error("XREADGROUP", &self.id.stream, e)),
            };
            self.read_succeeded();
            let Some(last) = items.iter().rev().find_map(ReadItem::id) else {
                return Ok(());
            };
            if last <= cursor {
                return Ok(());
            }
            cursor = last;
            debug!(entries = items.len(), "replaying own pending entries");
            let handled = self.handle(items, Source::Replay, None).await?;
            self.acker.ack(handled.ack).await?;
        }
    }

    /// A read of one entry was cut off: the server closed the connection instead of sending it
    /// (its reply exceeds `client-output-buffer-limit`). Every attempt counted a delivery; once the
    /// entry after `cursor` has used up `max_deliveries`, it is moved to the dead-letter stream by
    /// id (the move copies it inside Redis, so it never crosses a connection). True when moved.
    async fn dead_letter_oversized(&mut self, cursor: EntryId) -> Result<bool> {
        let id = self.id.clone();
        let (stream, group, consumer) = (&*id.stream, &*id.group, &*id.consumer);
        let after = cursor.to_string();
        let rows = self
            .client
            .retry("XPENDING", stream, |mut c| {
                let after = &after;
                async move {
                    let v: redis::Value = redis::cmd("XPENDING")
                        .arg(stream)
                        .arg(group)
                        .arg(format!("({after}"))
                        .arg("+")
                        .arg(1)
                        .arg(consumer)
                        .query_async(&mut c)
                        .await?;
                    Ok(streams::parse_pending(v))
                }
            })
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(false);
        };
        let max = self.opts.max_deliveries;
        if row.deliveries <= max {
            warn!(entry_id = %row.id, deliveries = row.deliveries, "a pending entry could not be read: the server closed the connection instead of sending it (larger than its client output buffer?); it is dead-lettered once it exceeds max_deliveries");
            return Ok(false);
        }
        let reason = format!(
            "larger than the client output buffer: the server closed the connection each of the {} times it was read (client-output-buffer-limit); moved by id",
            row.deliveries
        );
        self.dead_letter(DeadLetterOrder {
            id: row.id,
            entry: None,
            deliveries: Some(row.deliveries),
            reason,
        })
        .await?;
        Ok(true)
    }

    /// The error for a group that does not exist while `create_group` is off.
    pub(super) fn group_missing(&self, detail: String) -> Error {
        Error::Fatal {
            consumer: Some(self.id.clone()),
            command: "XREADGROUP",
            reason: format!(
                "consumer group `{}` does not exist on `{}` ({detail})",
                self.id.group, self.id.stream
            ),
            hint: format!(
                "create it (`XGROUP CREATE {} {} $ MKSTREAM`) or set create_group = true",
                self.id.stream, self.id.group
            ),
            source: None,
        }
    }
}

/// Whether a read failed because the connection went away mid-reply.
fn cut_off(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}
