//! One stream's own reads for the read loop ([`super::drive`]): `XREADGROUP … >` of the stream,
//! written against its credits, each reply handed over whole with when its read was written.

use std::collections::VecDeque;
use std::time::Instant;

use redis::RedisResult;

use super::conn::Conn;
use super::drive::{self, Ended, Next, Reads};
use super::{depth_after, Batches, ReaderConfig, Shared, READS_IN_FLIGHT};

/// Reads until stopped (then closes the connection, after the reads in flight returned), an
/// error (sent on), or the consume loop is gone.
pub(super) async fn run(conn: Conn, config: &ReaderConfig, shared: &Shared, tx: &Batches) {
    let mut own = Own {
        conn,
        config,
        shared,
        tx,
        count: config.count,
        packed: config.packed_read(config.count),
        in_flight: VecDeque::with_capacity(READS_IN_FLIGHT + 1),
    };
    match drive::run(&mut own, config.read_timeout).await {
        Ok(Ended::Stopped) => own.conn.close().await,
        Ok(Ended::Gone) => {}
        Err(e) => {
            let _ = tx.send(Err(config.error(e)));
        }
    }
}

struct Own<'a> {
    conn: Conn,
    config: &'a ReaderConfig,
    shared: &'a Shared,
    tx: &'a Batches,
    /// COUNT of the reads written now, and their command.
    count: usize,
    packed: Vec<u8>,
    /// When each read on the wire was written, and its COUNT, in the order written (replies come
    /// in that order).
    in_flight: VecDeque<(Instant, usize)>,
}

impl Reads for Own<'_> {
    fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    async fn write(&mut self, limit: usize) -> RedisResult<()> {
        let (n, count, _) = self.shared.take_credits(self.in_flight.len(), limit);
        if count != self.count {
            self.count = count;
            self.packed = self.config.packed_read(count);
        }
        for _ in 0..n {
            self.in_flight.push_back((Instant::now(), count));
            self.conn.send(&self.packed).await?;
        }
        Ok(())
    }

    fn on_the_wire(&self) -> usize {
        self.in_flight.len()
    }

    fn stopped(&self) -> bool {
        self.shared.lock().stop
    }

    async fn idle(&mut self) {
        // No credit: wait for the consume loop to take a batch (or to stop).
        self.shared.notify.notified().await;
    }

    async fn await_reply(&mut self) -> RedisResult<()> {
        if self.conn.buf.is_empty() {
            self.conn.fill(self.config.read_timeout).await?;
        }
        Ok(())
    }

    /// Hands the reply over. Reads on unless it is an error reply (the consume loop ends the
    /// session on it) or the consume loop is gone.
    async fn reply(&mut self, frame: Vec<u8>, entries: usize) -> RedisResult<Next> {
        let (sent, count) = self
            .in_flight
            .pop_front()
            .unwrap_or((Instant::now(), self.count));
        let error = frame.first() == Some(&b'-');
        let open = self.tx.send(Ok((frame, sent))).is_ok();
        self.shared.wake.replied();
        Ok(if open && !error {
            Next::Read(depth_after(entries, count))
        } else {
            Next::End
        })
    }
}
