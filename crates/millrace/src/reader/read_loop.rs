//! The read loop: writes reads as the pacing allows, frames replies, hands them over.

use std::collections::VecDeque;
use std::time::Instant;

use super::conn::Conn;
use super::{depth_after, Batches, ReaderConfig, Shared, READS_IN_FLIGHT};

/// Writes reads as credits allow, and on every reply writes the next read before the reply is
/// framed (small, complete replies are handed over first). Ends on stop (after the reads in
/// flight returned), on an error (sent on), or when the consume loop is gone.
pub(super) async fn run(mut conn: Conn, config: &ReaderConfig, shared: &Shared, tx: &Batches) {
    let mut count = config.count;
    let mut packed = config.packed_read(count);
    // When each read on the wire was written, in the order written (replies come in that order).
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(READS_IN_FLIGHT + 1);
    // Start as for a backlog: a consumer starting up often has one.
    let mut depth = READS_IN_FLIGHT;
    let fail = |e: redis::RedisError| {
        let _ = tx.send(Err(config.error(e)));
    };
    loop {
        let (to_write, new_count, stopped) = shared.take_credits(in_flight.len(), depth);
        if new_count != count {
            count = new_count;
            packed = config.packed_read(count);
        }
        for _ in 0..to_write {
            in_flight.push_back(Instant::now());
            if let Err(e) = conn.send(&packed).await {
                return fail(e);
            }
        }
        let Some(&sent) = in_flight.front() else {
            if stopped {
                conn.close().await;
                return;
            }
            // No credit: wait for the consume loop to take a batch (or to stop).
            shared.notify.notified().await;
            continue;
        };
        if conn.buf.is_empty() {
            if let Err(e) = conn.fill(config.read_timeout).await {
                return fail(e);
            }
        }
        in_flight.pop_front();
        // The reply has begun, so the server has executed the read. A small, complete reply is
        // handed over first (it is waited for; the next read follows at the top of the loop); for
        // a large one, which means a backlog, the next read goes on the wire before this reply is
        // framed.
        if !conn.buf.small_reply_buffered() {
            depth = READS_IN_FLIGHT;
            if shared.take_one(count, in_flight.len(), depth) {
                in_flight.push_back(Instant::now());
                if let Err(e) = conn.send(&packed).await {
                    return fail(e);
                }
            }
        }
        let frame = match conn.frame(config.read_timeout).await {
            Ok(f) => f,
            Err(e) => return fail(e),
        };
        depth = depth_after(conn.buf.last_entries(), count);
        if !hand_over(shared, tx, frame, sent) {
            return;
        }
    }
}

/// Hands a reply to the consume loop. Returns whether to go on reading: not after an error reply
/// (the consume loop ends the session on it), nor when the consume loop is gone.
fn hand_over(shared: &Shared, tx: &Batches, frame: Vec<u8>, sent: Instant) -> bool {
    let error = frame.first() == Some(&b'-');
    let open = tx.send(Ok((frame, sent))).is_ok();
    shared.wake.replied();
    open && !error
}
