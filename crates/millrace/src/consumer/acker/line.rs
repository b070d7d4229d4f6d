//! [`AckLine`]: the acks of a multi-stream consumer's streams, written together. One task per
//! multi-stream consumer takes every ack its streams queued, sends them as one pipeline of one
//! `XACK` per stream (one socket write, one reply read), answers each stream, and takes the next
//! ones; while a pipeline is on the wire, the acks queued meanwhile wait for it, as a stream's own
//! acks wait for its `XACK` in flight, and a stream's batches handled before its request is
//! written join that request (one `XACK` for several reads). No stream's ack waits for another
//! stream's handler: a pipeline goes out as soon as the one before returned.

use std::sync::OnceLock;

use redis::aio::ConnectionLike;
use tokio::sync::mpsc;

use super::AckRequest;
use crate::connection::Control;

/// Most streams' acks in one pipeline (each at most the acker's hold limit, 10,000 ids).
const REQUESTS_PER_PIPELINE: usize = 1024;

/// The ack writer shared by the streams of one multi-stream consumer (see the module docs).
/// Started on first use, on the control connection of the first stream that acks; ends when the
/// last stream lets go of it.
#[derive(Debug, Default)]
pub(crate) struct AckLine {
    tx: OnceLock<mpsc::UnboundedSender<AckRequest>>,
}

impl AckLine {
    /// A line that starts its task on the first ack.
    pub(crate) fn new() -> AckLine {
        AckLine::default()
    }

    /// Queues `request` for the next pipeline. On a Redis Cluster, whose control connection
    /// routes each key to its master, and if the line's task is gone, the request is sent alone.
    pub(super) fn submit(&self, mut request: AckRequest) {
        if !matches!(request.client.conn(), Control::Single(_)) {
            tokio::spawn(request.send_alone());
            return;
        }
        let conn = request.client.conn().clone();
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(conn, rx));
            tx
        });
        if let Err(mpsc::error::SendError(request)) = tx.send(request) {
            tokio::spawn(request.send_alone());
        }
    }
}

/// The line's task: one pipeline at a time, of every request queued when it goes out.
async fn run(mut conn: Control, mut rx: mpsc::UnboundedReceiver<AckRequest>) {
    let mut requests = Vec::with_capacity(REQUESTS_PER_PIPELINE);
    while rx.recv_many(&mut requests, REQUESTS_PER_PIPELINE).await > 0 {
        write(&mut conn, std::mem::take(&mut requests)).await;
    }
}

/// Sends `requests` as one pipeline. A request whose command failed, and every request when the
/// pipeline itself failed (a lost connection, a timeout), is sent again alone with its
/// consumer's retry policy, which names the consumer in the error it reports (`XACK` is
/// idempotent: chunks that landed land again harmlessly).
async fn write(conn: &mut Control, mut requests: Vec<AckRequest>) {
    let mut pipe = redis::pipe();
    // The request each command belongs to.
    let mut owners = Vec::new();
    for (i, r) in requests.iter_mut().enumerate() {
        r.close();
        let id = r.client.id();
        let added = r.command.add_to(&mut pipe, &id.stream, &id.group, &r.ids);
        owners.extend(std::iter::repeat_n(i, added));
    }
    let replies = conn.req_packed_commands(&pipe, 0, owners.len()).await;
    let mut failed = vec![false; requests.len()];
    match replies {
        Ok(replies) if replies.len() == owners.len() => {
            for (reply, &i) in replies.iter().zip(&owners) {
                failed[i] |= matches!(reply, redis::Value::ServerError(_));
            }
        }
        _ => failed.fill(true),
    }
    for (request, failed) in requests.into_iter().zip(failed) {
        if failed {
            tokio::spawn(request.send_alone());
        } else {
            request.landed();
        }
    }
}
