//! One connected incarnation of a consumer: the group made sure of, the permissions checked once,
//! and what a vanished group resets.

use std::time::Duration;

use tracing::info;

use super::Consumer;
use crate::dead_letter;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::spec::Membership;
use crate::streams;

/// What survives from one session to the next.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// The group is known to exist.
    group_ready: bool,
    /// The permission checks passed (once per consumer start).
    preflight_done: bool,
    /// Start id when (re)creating the group: the configured one first, `0` after the group vanished.
    create_from: String,
    /// The group vanished at least once.
    lost: bool,
    /// What the consumer is part of: a stream found by a pattern never has its key made
    /// (`MKSTREAM`).
    membership: Membership,
}

impl SessionState {
    pub(crate) fn new(start_id: String, membership: Membership) -> Self {
        SessionState {
            group_ready: false,
            preflight_done: false,
            create_from: start_id,
            lost: false,
            membership,
        }
    }

    /// The group vanished: recreate it from the start of the stream, so no entry added meanwhile is
    /// skipped.
    pub(crate) fn group_lost(&mut self) {
        self.group_ready = false;
        self.create_from = "0".to_owned();
        self.lost = true;
    }
}

impl Consumer {
    /// Makes sure the group exists, and checks the permissions once.
    pub(super) async fn prepare(&mut self) -> Result<()> {
        if self.session.group_ready {
            return Ok(());
        }
        self.ensure_group().await?;
        if !self.session.preflight_done {
            self.preflight().await?;
            self.session.preflight_done = true;
        }
        Ok(())
    }

    async fn ensure_group(&mut self) -> Result<()> {
        if self.opts.create_group {
            let id = self.id.clone();
            let start = self.session.create_from.clone();
            // A stream of a multi-stream consumer heals a lost group on its key, and never creates
            // a deleted key again: that stream is dropped instead. A stream found by a pattern
            // never creates its key: the sweep that found it may be older than its deletion.
            let mkstream = self.session.membership != Membership::Pattern
                && (self.cohort.is_none() || !self.session.lost);
            let created =
                streams::xgroup_create(self.client.conn(), &id.stream, &id.group, &start, mkstream)
                    .await
                    .map_err(|e| {
                        if e.to_string().contains("requires the key to exist") {
                            let detail = e.to_string();
                            Error::GroupLost {
                                consumer: id.clone(),
                                command: "XGROUP CREATE",
                                detail,
                                source: Some(std::sync::Arc::new(e)),
                            }
                        } else {
                            self.client.error("XGROUP CREATE", &id.stream, e)
                        }
                    })?;
            if created && start == "$" {
                info!(start = %start, "created consumer group at the end of the stream: entries added before now are not delivered (set start_id = \"0\" to read them)");
            } else if created {
                info!(start = %start, "created consumer group");
            }
        }
        self.session.group_ready = true;
        Ok(())
    }

    /// Exercises every command the consumer will need, harmlessly, so a missing ACL permission fails
    /// the start with an error naming the command instead of surfacing hours later.
    async fn preflight(&mut self) -> Result<()> {
        let id = self.id.clone();
        let (stream, group, consumer) = (&*id.stream, &*id.group, &*id.consumer);
        let none = EntryId::new(0, 1);
        let c = self.client.conn();
        let mut deleted = Vec::new();
        let checks: [(&'static str, redis::RedisResult<()>); 6] = [
            (
                "XACK",
                streams::xack(c, stream, group, &[none]).await.map(drop),
            ),
            (
                // A min-idle no entry can have: claims nothing, checks the permission (and drops any
                // deleted entries it scans, which are counted below).
                "XAUTOCLAIM",
                streams::xautoclaim(
                    c,
                    stream,
                    group,
                    consumer,
                    Duration::from_secs(u64::from(u32::MAX)),
                    EntryId::MIN,
                    1,
                )
                .await
                .map(|r| deleted.extend(r.deleted)),
            ),
            (
                "XPENDING",
                streams::xpending_range(c, stream, group, None, none, none, 1, Some(consumer))
                    .await
                    .map(drop),
            ),
            (
                "XCLAIM",
                redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(group)
                    .arg(consumer)
                    .arg(u64::MAX / 4)
                    .arg(none)
                    .arg("JUSTID")
                    .query_async::<redis::Value>(c)
                    .await
                    .map(drop),
            ),
            (
                "EVALSHA (ownership)",
                streams::set_idle_if_owned(c, stream, group, consumer, &[none], Duration::ZERO)
                    .await
                    .map(drop),
            ),
            (
                "EVALSHA (dead-letter move)",
                dead_letter::check_permissions(
                    c,
                    stream,
                    &self.dlq,
                    group,
                    self.dead_letter_in_steps,
                )
                .await,
            ),
        ];
        for (command, result) in checks {
            if let Err(e) = result {
                let key = if command.starts_with("EVALSHA (dead") {
                    self.dlq.as_str()
                } else {
                    stream
                };
                return Err(self.client.error(command, key, e));
            }
        }
        if !deleted.is_empty() {
            info!(
                entries = deleted.len(),
                "pending entries were deleted or trimmed; Redis dropped them from the pending list"
            );
            self.stats.deleted_while_pending(deleted.len());
        }
        Ok(())
    }
}
