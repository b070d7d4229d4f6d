//! The one read loop of every reader kind: reads written as the credits allow, kept pipelined,
//! and on a reply that begins large (a backlog) the next read written before the reply is framed,
//! so the server executes it while this process frames, parses and handles the last. What a read
//! is and where its reply goes is the reader kind's ([`Reads`]): one stream's own reads
//! ([`super::own_reads`]), or a shared read's ([`super::shared`]).

use std::time::Duration;

use redis::RedisResult;

use super::conn::Conn;
use super::contract::READS_IN_FLIGHT;

/// What to do after a reply was handed over.
pub(super) enum Next {
    /// Read on, keeping this many reads on the wire.
    Read(usize),
    /// Stop reading now (the consume loop is gone, or it ends the session on this reply).
    End,
}

/// How the read loop ended without an error.
pub(super) enum Ended {
    /// Stopped with no read on the wire: the connection may be closed gracefully.
    Stopped,
    /// [`Next::End`].
    Gone,
}

/// One reader kind's reads.
pub(super) trait Reads {
    fn conn(&mut self) -> &mut Conn;

    /// Writes reads while fewer than `limit` are on the wire and the credits allow.
    async fn write(&mut self, limit: usize) -> RedisResult<()>;

    /// Reads on the wire.
    fn on_the_wire(&self) -> usize;

    /// Whether the reader is stopped (no more reads).
    fn stopped(&self) -> bool;

    /// Waits for a credit, a subscriber or the stop.
    async fn idle(&mut self);

    /// Waits until the reply to the oldest read on the wire begins to arrive.
    async fn await_reply(&mut self) -> RedisResult<()>;

    /// Hands over the reply to the oldest read on the wire, whose fullest stream had `entries`.
    async fn reply(&mut self, frame: Vec<u8>, entries: usize) -> RedisResult<Next>;
}

/// Reads until stopped (with no read on the wire), told to end, or an error.
pub(super) async fn run<R: Reads>(reads: &mut R, read_timeout: Duration) -> RedisResult<Ended> {
    // Start as for a backlog: a consumer starting up often has one.
    let mut depth = READS_IN_FLIGHT;
    loop {
        reads.write(depth).await?;
        if reads.on_the_wire() == 0 {
            if reads.stopped() {
                return Ok(Ended::Stopped);
            }
            reads.idle().await;
            continue;
        }
        reads.await_reply().await?;
        // The reply has begun, so the server has executed the read. A small, complete reply is
        // handed over first (the next read follows at the top of the loop); for a large one,
        // which means a backlog, the next read goes on the wire before this reply is framed: one
        // read, while fewer than READS_IN_FLIGHT others are (the one replying still counts as on
        // the wire). Any further read waits for the reply's depth at the top of the loop.
        if !reads.conn().buf.small_reply_buffered() {
            let limit = (reads.on_the_wire() + 1).min(READS_IN_FLIGHT + 1);
            reads.write(limit).await?;
        }
        let frame = reads.conn().frame(read_timeout).await?;
        let entries = reads.conn().buf.last_entries();
        match reads.reply(frame, entries).await? {
            Next::Read(d) => depth = d,
            Next::End => return Ok(Ended::Gone),
        }
    }
}
