//! Which command acknowledges a consumer's entries: `XACK`, or, for a consumer with
//! [`ConsumerOptions::delete_acked`](crate::ConsumerOptions::delete_acked), `XACKDEL … ACKED`
//! (Redis 8.2+), which also deletes each entry once every group of the stream has acknowledged
//! it; and the check at `start()` that the server has it.

use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::capabilities::ServerInfo;
use crate::connection::Backend;
use crate::entry::EntryId;
use crate::error::{Error, Result};
use crate::id::ConsumerId;

/// Ids per `XACKDEL` call, as for `XACK`.
const IDS_PER_CALL: usize = 1000;

/// How the acker acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum AckCommand {
    /// `XACK`: the entry stays in the stream (trimming is someone else's job).
    #[default]
    Ack,
    /// `XACKDEL stream group ACKED IDS n id…`: acknowledged, and deleted once no group of the
    /// stream still needs it (every group was delivered it and acknowledged it).
    AckDelete,
}

impl AckCommand {
    /// The command for a consumer whose `delete_acked` is `delete`.
    pub(crate) fn new(delete: bool) -> Self {
        if delete {
            AckCommand::AckDelete
        } else {
            AckCommand::Ack
        }
    }

    /// The command's name, for errors and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AckCommand::Ack => "XACK",
            AckCommand::AckDelete => "XACKDEL",
        }
    }

    /// Adds the commands that acknowledge `ids` of `group` to `pipe` (one per 2,000 ids for
    /// `XACK`, per 1,000 for `XACKDEL`); returns how many commands it added.
    pub(crate) fn add_to(
        self,
        pipe: &mut redis::Pipeline,
        stream: &str,
        group: &str,
        ids: &[EntryId],
    ) -> usize {
        let per_call = match self {
            AckCommand::Ack => crate::streams::IDS_PER_CALL,
            AckCommand::AckDelete => IDS_PER_CALL,
        };
        let mut added = 0;
        for chunk in ids.chunks(per_call) {
            match self {
                AckCommand::Ack => pipe.cmd("XACK").arg(stream).arg(group).arg(chunk),
                AckCommand::AckDelete => pipe
                    .cmd("XACKDEL")
                    .arg(stream)
                    .arg(group)
                    .arg("ACKED")
                    .arg("IDS")
                    .arg(chunk.len())
                    .arg(chunk),
            };
            added += 1;
        }
        added
    }

    /// Acknowledges `ids` of `group`; returns how many were pending (and are no longer).
    pub(crate) async fn send<C: ConnectionLike + Send>(
        self,
        conn: &mut C,
        stream: &str,
        group: &str,
        ids: &[EntryId],
    ) -> RedisResult<usize> {
        match self {
            AckCommand::Ack => crate::streams::xack(conn, stream, group, ids).await,
            AckCommand::AckDelete => {
                let mut acked = 0;
                for chunk in ids.chunks(IDS_PER_CALL) {
                    // Per id: 1 acknowledged and deleted, 2 acknowledged but another group still
                    // needs it, -1 not pending in this group.
                    let replies: Vec<i64> = redis::cmd("XACKDEL")
                        .arg(stream)
                        .arg(group)
                        .arg("ACKED")
                        .arg("IDS")
                        .arg(chunk.len())
                        .arg(chunk)
                        .query_async(conn)
                        .await?;
                    acked += replies.iter().filter(|r| **r > 0).count();
                }
                Ok(acked)
            }
        }
    }
}

/// At `start()`: every consumer with `delete_acked` needs a server with `XACKDEL`; the server
/// says what it is (`HELLO`), so a Redis 7.x or Valkey 9.1 is refused here, naming the consumer,
/// the server and the alternatives, instead of failing every acknowledgement later.
pub(crate) async fn check_server(backend: &Backend, consumers: &[&ConsumerId]) -> Result<()> {
    let Some(first) = consumers.first() else {
        return Ok(());
    };
    let mut con = backend.control();
    let server = ServerInfo::detect(&mut con)
        .await
        .map_err(|e| Error::from_redis(first, "HELLO", "", e))?;
    if server.has_acked_trim() {
        return Ok(());
    }
    Err(Error::config(
        Some(first),
        "delete_acked",
        format!(
            "needs XACKDEL (Redis 8.2 or newer), and {} runs {server}; remove `delete_acked` \
             and trim the stream instead (`millrace trim STREAM --acked`, or MAXLEN/MINID)",
            backend.server()
        ),
    ))
}
