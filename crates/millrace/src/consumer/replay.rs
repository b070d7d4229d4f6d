//! The own-PEL replay: after every (re)start a consumer first reads back the entries still pending
//! for it, with an advancing cursor, so each is handled once per replay and entries its handler
//! leaves pending are left to `XAUTOCLAIM` instead of looping.

use tracing::debug;

use super::Consumer;
use crate::entry::{EntryId, Source};
use crate::error::{Error, Result};
use crate::streams::{self, ReadItem};

impl Consumer {
    pub(super) async fn replay_own_pending(&mut self) -> Result<()> {
        let mut cursor = EntryId::MIN;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let cmd = streams::xreadgroup_cmd(
                &self.id.stream,
                &self.id.group,
                &self.id.consumer,
                self.read_size.count(),
                None,
                &cursor.to_string(),
            );
            let items = match streams::read(self.client.conn(), &cmd).await {
                Ok(items) => items,
                Err(e) if e.code() == Some("NOGROUP") && !self.opts.create_group => {
                    return Err(self.group_missing(e.to_string()))
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
        }
    }
}
