//! The own-PEL replay over the reader's own connection: `XREADGROUP … STREAMS s <id>` (never
//! blocking) before live reads begin, so a reply that breaks the connection (too large, out of
//! step) closes only this consumer's socket, never the shared control connection.

use super::{Phase, Reader};
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::protocol;
use crate::streams::{self, ReadItem};

impl Reader {
    /// Up to `count` of the consumer's own pending entries with ids after `after`, deleted ones
    /// as tombstones; empty once none are left. Only before the first [`Reader::next`]. A failure
    /// closes the connection: the reader is then spent, and its `next` fails too.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the consumer's replay is to move onto it")
    )]
    pub(crate) async fn replay(&mut self, after: &EntryId, count: usize) -> Result<Vec<ReadItem>> {
        let Phase::Idle(idle) = &mut self.phase else {
            return Err(Error::Internal {
                consumer: self.id.clone(),
                message: "a replay on a reader whose live reads began or whose connection failed"
                    .into(),
            });
        };
        let id = &idle.config.id;
        let packed = streams::xreadgroup_cmd(
            &id.stream,
            &id.group,
            &id.consumer,
            count,
            None,
            &after.to_string(),
        )
        .get_packed_command();
        let limit = idle.config.command_timeout;
        let read = async {
            idle.conn.send(&packed).await?;
            let frame = idle.conn.frame(limit).await?;
            protocol::parse_read_reply(&frame)
        };
        match read.await {
            Ok(items) => Ok(items),
            Err(e) => {
                // Dropping the idle connection closes it.
                self.phase = Phase::Done;
                Err(Error::from_redis(
                    &self.id,
                    "XREADGROUP",
                    &self.id.stream,
                    e,
                ))
            }
        }
    }
}
