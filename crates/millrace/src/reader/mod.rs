//! The live reader of one consumer: a thread with a blocking connection of its own that keeps
//! `XREADGROUP … >` calls pipelined and writes the next one the moment a reply is in, before
//! parsing it, so the server executes the next read while this process parses and handles the last.
//!
//! Why a thread: redis-rs's multiplexed connection parses every reply it has received before it
//! writes the next queued command, so two reads pipelined on it do not overlap with parsing and the
//! server idles while the client works (measured in `docs/benchmarks.md`, variant b′). A blocking
//! connection lets the write come first; [`wire`] says how the connection is read.
//!
//! Flow control: a read is written only against a credit, and the consume loop returns a credit
//! when it takes a batch. With [`FETCHED_AHEAD`] credits, at most that many batches are fetched
//! (in the consumer's pending list) ahead of the one the handler is working on.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::connection::Backend;
use crate::error::{Error, Result};
use crate::spec::ConsumerId;
use crate::streams::{self, ReadItem};

mod wire;

use wire::{Fetched, Wire};

/// Reads on the wire at once. Two suffice to keep the server busy: one executing, one queued.
const READS_IN_FLIGHT: usize = 2;
/// Batches fetched ahead of the handler: the reads in flight plus one reply parsed and waiting, so
/// the next read can be written before the waiting reply is taken.
pub(crate) const FETCHED_AHEAD: usize = READS_IN_FLIGHT + 1;
/// How long a stop waits for a woken read's reply before it sends `CLIENT UNBLOCK` again (in case
/// the unblock reached the server before the read blocked).
const UNBLOCK_EVERY: Duration = Duration::from_millis(20);

/// What the settings of one reader are.
pub(crate) struct ReaderConfig {
    pub(crate) id: ConsumerId,
    pub(crate) count: usize,
    pub(crate) block: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) command_timeout: Duration,
}

struct State {
    /// Reads that may still be written (see the module docs).
    credits: usize,
    stop: bool,
    /// COUNT of the next read written.
    count: usize,
    /// The thread waits for a credit (so a returned credit must wake it).
    waiting: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain numbers: a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The consume loop's handle on its reader thread. Dropping it stops the thread after the reads in
/// flight return (at most BLOCK later); [`Reader::stop`] stops it at once and returns what it fetched.
pub(crate) struct Reader {
    batches: mpsc::UnboundedReceiver<Result<Fetched>>,
    shared: Arc<Shared>,
    client_id: Option<i64>,
    /// Resolves (with an error) when the thread has ended and its connection is closed.
    finished: oneshot::Receiver<()>,
    id: ConsumerId,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("consumer", &self.id)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl Reader {
    /// Connects (on the new thread) and starts reading. Fails with the connection error.
    pub(crate) async fn start(backend: &Backend, config: ReaderConfig) -> Result<Reader> {
        let client = backend.client().clone();
        let connect_timeout = backend.connect_timeout();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                credits: FETCHED_AHEAD,
                stop: false,
                count: config.count,
                waiting: false,
            }),
            wake: Condvar::new(),
        });
        let (tx, batches) = mpsc::unbounded_channel();
        let (connected_tx, connected) = oneshot::channel();
        let (finished_tx, finished) = oneshot::channel::<()>();
        let id = config.id.clone();
        let thread_shared = shared.clone();
        let name: String = format!("millrace-rd-{}", config.id.consumer)
            .chars()
            .take(15)
            .collect();
        let spawned = std::thread::Builder::new()
            .name(name)
            .stack_size(512 * 1024)
            .spawn(move || {
                let _finished = finished_tx;
                let connected = Wire::connect(
                    &client,
                    connect_timeout,
                    config.command_timeout,
                    config.read_timeout,
                );
                let (mut conn, client_id) = match connected {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = connected_tx.send(Err(e));
                        return;
                    }
                };
                if connected_tx.send(Ok(client_id)).is_err() {
                    return;
                }
                read_loop(&mut conn, &config, &thread_shared, &tx);
            });
        if let Err(e) = spawned {
            return Err(Error::Internal {
                consumer: id,
                message: format!("could not start the reader thread: {e}"),
            });
        }
        let client_id = match connected.await {
            Ok(Ok(client_id)) => client_id,
            Ok(Err(e)) => return Err(Error::from_redis(&id, "CONNECT", &id.stream, e)),
            Err(_) => {
                return Err(Error::Internal {
                    consumer: id,
                    message: "the reader thread ended before connecting".into(),
                })
            }
        };
        debug!(
            server = backend.server(),
            ?client_id,
            "read connection open"
        );
        Ok(Reader {
            batches,
            shared,
            client_id,
            finished,
            id,
        })
    }

    /// The next batch (empty after a BLOCK timeout), in the order the reads were sent.
    pub(crate) async fn next(&mut self) -> Result<Vec<ReadItem>> {
        match self.batches.recv().await {
            Some(batch) => {
                let wake = {
                    let mut s = self.shared.lock();
                    s.credits += 1;
                    s.waiting
                };
                if wake {
                    self.shared.wake.notify_one();
                }
                match batch? {
                    Fetched::Items(items) => Ok(items),
                    Fetched::Frame(frame) => wire::parse_frame(frame)
                        .map_err(|e| Error::from_redis(&self.id, "XREADGROUP", &self.id.stream, e)),
                }
            }
            None => Err(Error::Internal {
                consumer: self.id.clone(),
                message: "the reader thread ended unexpectedly".into(),
            }),
        }
    }

    /// Sets COUNT for the reads written from now on.
    pub(crate) fn set_count(&self, count: usize) {
        self.shared.lock().count = count;
    }

    /// Stops reading: no new reads are written, blocked ones are woken with `CLIENT UNBLOCK` (when
    /// permitted), and once the thread has ended and closed its connection, the entries the last
    /// reads fetched are returned, for the caller to release.
    pub(crate) async fn stop(mut self, control: &mut ConnectionManager) -> Vec<ReadItem> {
        self.signal_stop();
        let mut client_id = self.client_id;
        let mut fetched = Vec::new();
        let id = self.id.clone();
        let mut keep = |batch: Result<Fetched>| match batch.and_then(|f| match f {
            Fetched::Items(items) => Ok(items),
            Fetched::Frame(frame) => wire::parse_frame(frame)
                .map_err(|e| Error::from_redis(&id, "XREADGROUP", &id.stream, e)),
        }) {
            Ok(items) => fetched.extend(items),
            Err(e) => debug!(error = %e, "last read failed during stop; its entries stay pending"),
        };
        loop {
            if let Some(id) = client_id {
                let r: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("UNBLOCK")
                    .arg(id)
                    .query_async(control)
                    .await;
                if let Err(e) = r {
                    debug!(error = %e, "CLIENT UNBLOCK not possible; waiting for BLOCK to run out");
                    client_id = None;
                }
            }
            // Each woken read returns a reply; the read pipelined behind it may block next, so
            // every reply calls for another unblock, until the thread is done.
            tokio::select! {
                _ = &mut self.finished => break,
                Some(batch) = self.batches.recv() => keep(batch),
                _ = tokio::time::sleep(UNBLOCK_EVERY), if client_id.is_some() => {}
            }
        }
        while let Ok(batch) = self.batches.try_recv() {
            keep(batch);
        }
        fetched
    }

    fn signal_stop(&self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The thread's loop: write reads as credits allow, and on every reply write the next read before
/// parsing it. Ends on stop (after the reads in flight returned), on an error (sent on), or when
/// the consume loop is gone.
fn read_loop(
    conn: &mut Wire,
    config: &ReaderConfig,
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Result<Fetched>>,
) {
    let id = &config.id;
    let packed_for = |count: usize| {
        streams::xreadgroup_cmd(
            &id.stream,
            &id.group,
            &id.consumer,
            count,
            Some(config.block),
            ">",
        )
        .get_packed_command()
    };
    let mut count = config.count;
    let mut packed = packed_for(count);
    let mut in_flight = 0usize;
    let fail = |e: redis::RedisError| {
        let _ = tx.send(Err(Error::from_redis(id, "XREADGROUP", &id.stream, e)));
    };
    loop {
        // Write what the credits allow; with nothing in flight and no credit, wait for the
        // consume loop to take a batch.
        let (to_write, new_count) = {
            let mut s = shared.lock();
            loop {
                if s.stop {
                    break (0, s.count);
                }
                let n = s.credits.min(READS_IN_FLIGHT - in_flight);
                if n > 0 || in_flight > 0 {
                    s.credits -= n;
                    break (n, s.count);
                }
                s.waiting = true;
                s = shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                s.waiting = false;
            }
        };
        if new_count != count {
            count = new_count;
            packed = packed_for(count);
        }
        for _ in 0..to_write {
            if let Err(e) = conn.send(&packed) {
                return fail(e);
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            // Stopped: close so that the server has let go of the connection when the stop
            // returns, not some time after.
            conn.close();
            return;
        }
        let small = match conn.wait_reply() {
            Ok(small) => small,
            Err(e) => return fail(e),
        };
        in_flight -= 1;
        if small {
            // Already complete: hand it over first, it is waited for; the next read follows a
            // few microseconds later.
            let fetched = match conn.fetch() {
                Ok(f) => f,
                Err(e) => return fail(e),
            };
            if tx.send(Ok(fetched)).is_err() {
                return;
            }
            continue;
        }
        // The reply has begun, so the server has executed the read: the next read goes on the
        // wire before this reply is parsed.
        let write_next = {
            let mut s = shared.lock();
            let go = !s.stop && s.credits > 0 && s.count == count;
            if go {
                s.credits -= 1;
            }
            go
        };
        if write_next {
            if let Err(e) = conn.send(&packed) {
                return fail(e);
            }
            in_flight += 1;
        }
        let fetched = match conn.fetch() {
            Ok(f) => f,
            Err(e) => return fail(e),
        };
        if tx.send(Ok(fetched)).is_err() {
            return;
        }
    }
}
