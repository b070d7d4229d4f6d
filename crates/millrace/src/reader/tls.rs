//! The reader over TLS: a thread with a blocking redis-rs connection (redis-rs does the TLS
//! handshake and parses replies), with the same pipelining and flow control as the plain reader.

use std::sync::Arc;
use std::time::Duration;

use redis::{Client, RedisResult, Value};
use tokio::sync::oneshot;

use super::{depth_after, Batches, Fetched, ReaderConfig, Shared, READS_IN_FLIGHT};
use crate::streams::reply;

/// Connects on a new thread and starts reading there. Returns the connection's client id.
pub(super) async fn start(
    client: Client,
    connect_timeout: Duration,
    config: ReaderConfig,
    shared: Arc<Shared>,
    tx: Batches,
    finished: oneshot::Sender<()>,
) -> RedisResult<Option<i64>> {
    let (connected_tx, connected) = oneshot::channel();
    let name: String = format!("millrace-rd-{}", config.id.consumer)
        .chars()
        .take(15)
        .collect();
    std::thread::Builder::new()
        .name(name)
        .stack_size(512 * 1024)
        .spawn(move || {
            let _finished = finished;
            let mut conn = match connect(&client, connect_timeout, &config) {
                Ok((conn, client_id)) => {
                    if connected_tx.send(Ok(client_id)).is_err() {
                        return;
                    }
                    conn
                }
                Err(e) => {
                    let _ = connected_tx.send(Err(e));
                    return;
                }
            };
            read_loop(&mut conn, &config, &shared, &tx);
        })?;
    connected.await.unwrap_or_else(|_| {
        Err(std::io::Error::other("the reader thread ended before connecting").into())
    })
}

fn connect(
    client: &Client,
    connect_timeout: Duration,
    config: &ReaderConfig,
) -> RedisResult<(redis::Connection, Option<i64>)> {
    let mut conn = client.get_connection_with_timeout(connect_timeout)?;
    conn.set_read_timeout(Some(config.command_timeout))?;
    conn.set_write_timeout(Some(config.command_timeout))?;
    // CLIENT ID lets a stop wake a blocked read with CLIENT UNBLOCK; without the permission a
    // stop waits for BLOCK to run out instead.
    let client_id = match redis::cmd("CLIENT").arg("ID").query::<Value>(&mut conn) {
        Ok(Value::Int(id)) => Some(id),
        Ok(_) => None,
        Err(e) if e.code() == Some("NOPERM") => None,
        Err(e) => return Err(e),
    };
    conn.set_read_timeout(Some(config.read_timeout))?;
    Ok((conn, client_id))
}

/// Writes reads as credits allow, and on every reply writes the next read before parsing it.
fn read_loop(conn: &mut redis::Connection, config: &ReaderConfig, shared: &Shared, tx: &Batches) {
    let mut count = config.count;
    let mut packed = config.packed_read(count);
    let mut in_flight = 0usize;
    let mut depth = READS_IN_FLIGHT;
    let fail = |e: redis::RedisError| {
        let _ = tx.send(Err(config.error(e)));
    };
    loop {
        let (to_write, new_count, stopped) = shared.take_credits(in_flight, depth);
        if new_count != count {
            count = new_count;
            packed = config.packed_read(count);
        }
        for _ in 0..to_write {
            if let Err(e) = conn.send_packed_command(&packed) {
                return fail(e);
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            if stopped {
                return;
            }
            // No credit: wait for the consume loop to take a batch (or to stop).
            let mut s = shared.lock();
            while !s.stop && s.usable() == 0 {
                // Waiting for the consume loop to take a batch.
                s.waiting = true;
                s = shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                s.waiting = false;
            }
            continue;
        }
        let value = match conn.recv_response() {
            Ok(Value::ServerError(e)) => return fail(e.into()),
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        in_flight -= 1;
        // The next read goes on the wire before this reply is parsed.
        if shared.take_one(count, in_flight, depth) {
            if let Err(e) = conn.send_packed_command(&packed) {
                return fail(e);
            }
            in_flight += 1;
        }
        let items = reply::parse_read_reply(value);
        depth = depth_after(items.len(), count);
        if tx.send(Ok(Fetched::Items(items))).is_err() {
            return;
        }
    }
}
