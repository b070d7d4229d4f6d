//! Replaying a dead letter: its original fields go back to the source stream as a new entry, and
//! it leaves the dead-letter stream.

use std::fmt;

use redis::aio::ConnectionLike;
use redis::RedisResult;

use super::letter::{DeadLetter, Letter};
use super::stream::DeadLetterStream;
use super::transfer::{Marker, Release, Transfer};
use crate::entry::EntryId;

/// What [`DeadLetterStream::replay`] did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The original fields were added to the source stream with this id, and the dead letter
    /// was deleted.
    Replayed {
        /// The entry's id in the source stream now.
        new_id: EntryId,
    },
    /// Nothing changed, for this reason.
    Skipped(Skip),
}

/// Why a dead letter was not replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Skip {
    /// The entry does not start with the `millrace.*` fields.
    NotADeadLetter,
    /// It came from another stream (named here, lossily decoded).
    OtherSource(String),
    /// It has no original fields: it was unreadable when it was dead-lettered.
    NoFields,
    /// It was no longer in the dead-letter stream (replayed or purged meanwhile).
    Gone,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotADeadLetter => f.write_str("not a millrace dead letter"),
            Skip::OtherSource(s) => write!(f, "came from stream `{s}`, not this one"),
            Skip::NoFields => f.write_str(
                "has no original fields (it was unreadable when it was dead-lettered); inspect it \
                 and purge it",
            ),
            Skip::Gone => {
                f.write_str("no longer in the dead-letter stream (replayed or purged meanwhile)")
            }
        }
    }
}

impl DeadLetterStream {
    /// Whether `letter` can be replayed to this source stream, without asking Redis (what a dry
    /// run shows).
    pub fn check_replay<'a>(&self, letter: &'a Letter) -> Result<&'a DeadLetter, Skip> {
        let Some(dead) = &letter.dead_letter else {
            return Err(Skip::NotADeadLetter);
        };
        if !letter.is_from(self.source()) {
            return Err(Skip::OtherSource(dead.source_stream.clone()));
        }
        if dead.fields.is_empty() {
            return Err(Skip::NoFields);
        }
        Ok(dead)
    }

    /// Moves `letter` back to the source stream: if it is still in the dead-letter stream, `XADD`
    /// its original fields to the source, then `XDEL` it, atomically (in steps for more than 1,000
    /// fields; see the [module docs](super)). The consumer groups read it again as a new entry.
    /// On a Redis Cluster both keys must be in one slot; see [`replay_in_steps`](Self::replay_in_steps).
    pub async fn replay<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        letter: &Letter,
    ) -> RedisResult<Replay> {
        self.replay_with(conn, letter, false).await
    }

    /// [`replay`](Self::replay) for a source and dead-letter stream in different slots of a Redis
    /// Cluster (where one script cannot touch both): `XRANGE` (still a dead letter?), `XADD` to
    /// the source, then `XDEL`, each on its key's master. Failed steps are retried (up to 3
    /// times, on connection errors, timeouts, `TRYAGAIN`, `CLUSTERDOWN`) without adding a second
    /// copy: the first attempt notes the source's last id before its `XADD`, and a retry looks
    /// there for its own copy first. A crash of the caller between `XADD` and `XDEL` leaves the
    /// entry in both streams: check the source before replaying it again.
    pub async fn replay_in_steps<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        letter: &Letter,
    ) -> RedisResult<Replay> {
        self.replay_with(conn, letter, true).await
    }

    async fn replay_with<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        letter: &Letter,
        in_steps: bool,
    ) -> RedisResult<Replay> {
        let dead = match self.check_replay(letter) {
            Ok(dead) => dead,
            Err(skip) => return Ok(Replay::Skipped(skip)),
        };
        let mut fields: Vec<&[u8]> = Vec::with_capacity(2 * dead.fields.len());
        for (k, v) in &dead.fields {
            fields.push(k);
            fields.push(v);
        }
        let transfer = Transfer {
            from: self.key(),
            to: self.source(),
            id: letter.id(),
            release: Release::Delete,
            in_steps,
        };
        let mut marker = Marker::default();
        let mut attempt = 0u32;
        let moved = loop {
            match transfer.run(conn, &fields, false, &mut marker).await {
                Ok(moved) => break moved,
                Err(e) if in_steps && attempt < 3 && retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(match moved {
            Some(id) => Replay::Replayed {
                new_id: id.parse().map_err(|_| {
                    redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "XADD returned something that is not an entry id",
                        id,
                    ))
                })?,
            },
            None => Replay::Skipped(Skip::Gone),
        })
    }
}

/// A step failure worth trying again: the connection, a timeout, or the cluster moving.
fn retryable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.code(), Some("TRYAGAIN" | "CLUSTERDOWN" | "LOADING"))
}
