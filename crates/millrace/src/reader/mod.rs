//! The live reader of one consumer: its own connection, `XREADGROUP … >` calls kept pipelined,
//! and the next read written the moment a reply begins to arrive, before it is parsed, so the
//! server executes the next read while this process parses and handles the last.
//!
//! Why not a redis-rs async connection: the multiplexed connection parses every reply it has
//! received before it writes the next queued command, so pipelined reads do not overlap with
//! parsing and the server idles while the client works (the benchmark's variant b′), and its parser
//! costs about as much client CPU per entry as everything else millrace does. So the reader is a
//! task on the runtime with a socket of its own, plain TCP, Unix or TLS alike ([`conn`]): it frames
//! replies ([`crate::protocol::FrameBuf`]) and hands their bytes over; the consume loop parses
//! them in one pass straight into entries ([`crate::protocol::parse_read_reply`]). What this module
//! adds is pacing: when to write a read, and how many.
//!
//! Flow control: a read is written only against a credit, and the consume loop returns a credit
//! when it takes a batch. With [`FETCHED_AHEAD`] credits, at most that many batches are fetched
//! (in the consumer's pending list) ahead of the one the handler is working on. What every reader
//! kind keeps alike is implemented once, for this reader and the shared read ([`shared`]): the
//! read loop and its pipelining in [`drive`]; pace, credits, reads in flight, configuration and
//! the release of untaken entries in [`contract`]; the `CLIENT UNBLOCK` wake-ups and the wait of
//! a stop in [`wake`]. This reader's own reads are in [`own_reads`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::connection::{Backend, Control, Node};
use crate::error::{Error, Result};
use crate::id::ConsumerId;
use crate::protocol;
use crate::streams::ReadItem;

mod conn;
mod contract;
mod drive;
mod own_reads;
mod pending;
mod shared;
#[cfg(test)]
mod tests;
mod wake;

pub(crate) use conn::{connection_lost, cut_mid_reply};
use contract::{depth_after, Credits, CLOSE_WAIT, READS_IN_FLIGHT, UNBLOCK_EVERY};
pub(crate) use contract::{release, ReadPace, ReaderConfig, FETCHED_AHEAD};
pub(crate) use pending::PendingReader;
pub(crate) use shared::{SharedReaders, Subscription, SLICE};
use wake::Wake;

/// The bytes of one complete RESP2 reply taken off the wire, parsed on the consume loop's side
/// (so the reader task goes back to the socket at once), and when its read was written.
type Frame = (Vec<u8>, Instant);

type Batches = mpsc::UnboundedSender<Result<Frame>>;

struct State {
    /// The stream's [`Credits`] and pace (see the module docs).
    credits: Credits,
    stop: bool,
}

/// What the consume loop and its reader share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the reader task.
    notify: Notify,
    /// Wakes the reader's blocked reads at a stop, and tells when it has ended.
    wake: Wake,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain numbers: a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what the credits allow: up to `depth - in_flight` reads. Returns how many, the COUNT
    /// to use, and whether the reader is stopped.
    fn take_credits(&self, in_flight: usize, depth: usize) -> (usize, usize, bool) {
        let mut s = self.lock();
        if s.stop {
            return (0, s.credits.count(), true);
        }
        let n = s.credits.take(depth.saturating_sub(in_flight));
        (n, s.credits.count(), false)
    }

    fn signal_stop(&self) {
        self.lock().stop = true;
        self.notify.notify_one();
    }
}

/// The consume loop's handle on its reader. [`Reader::stop`] stops it gracefully and returns what it
/// fetched. Dropping it (a failed session, a panicking handler) aborts the reader task at once:
/// its socket closes (TLS or not), so the server drops the blocked read instead of delivering
/// entries to a reader nobody listens to (they wait in the consumer's pending list for its next
/// replay, or for `claim_min_idle`).
pub(crate) struct Reader {
    batches: mpsc::UnboundedReceiver<Result<Frame>>,
    shared: Arc<Shared>,
    phase: Phase,
    id: ConsumerId,
    /// When the read of the batch last returned by [`Reader::next`] was written.
    sent_after: Instant,
}

/// Who holds the reader's connection.
enum Phase {
    /// Connected, live reads not begun yet.
    Idle(Box<Idle>),
    /// The read loop task holds it; aborting the task closes it.
    Live(tokio::task::AbortHandle),
    /// Stopped gracefully, or closed after a failed replay.
    Done,
}

/// What the read loop task is started with.
struct Idle {
    conn: conn::Conn,
    config: ReaderConfig,
    tx: Batches,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("consumer", &self.id)
            .field("client_id", &self.shared.wake.client_id())
            .finish()
    }
}

impl Reader {
    /// Connects to `node` and starts reading. Fails with the connection error.
    pub(crate) async fn start(
        backend: &Backend,
        node: &Node,
        config: ReaderConfig,
    ) -> Result<Reader> {
        let mut reader = Reader::connect(backend, node, config).await?;
        reader.begin_live();
        Ok(reader)
    }

    /// Connects without reading yet; [`Reader::start`] then begins the live reads. (The own-PEL
    /// replay reads over a [`PendingReader`] of its own.)
    async fn connect(backend: &Backend, node: &Node, config: ReaderConfig) -> Result<Reader> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                credits: Credits::new(config.count),
                stop: false,
            }),
            notify: Notify::new(),
            wake: Wake::new(node.cluster_address()),
        });
        let (tx, batches) = mpsc::unbounded_channel();
        let id = config.id.clone();
        let (conn, client_id) = conn::Conn::open(backend, node, config.command_timeout)
            .await
            .map_err(|e| Error::from_redis(&id, "CONNECT", &id.stream, e))?;
        shared.wake.connected(client_id);
        debug!(
            server = %node.address(),
            ?client_id,
            "read connection open"
        );
        Ok(Reader {
            batches,
            shared,
            phase: Phase::Idle(Box::new(Idle { conn, config, tx })),
            id,
            sent_after: Instant::now(),
        })
    }

    /// Hands the connection to the read loop task, which begins writing reads.
    fn begin_live(&mut self) {
        if !matches!(self.phase, Phase::Idle(_)) {
            return;
        }
        let Phase::Idle(idle) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let Idle { conn, config, tx } = *idle;
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            // However the task ends (returned, or aborted with its connection), a stop learns it.
            let _finished = shared.wake.finished().clone().drop_guard();
            own_reads::run(conn, &config, &shared, &tx).await;
        });
        self.phase = Phase::Live(task.abort_handle());
    }

    /// The next batch (empty after a BLOCK timeout), in the order the reads were sent.
    pub(crate) async fn next(&mut self) -> Result<Vec<ReadItem>> {
        self.begin_live();
        match self.batches.recv().await {
            Some(batch) => {
                self.shared.lock().credits.give_back();
                self.shared.notify.notify_one();
                let (frame, sent) = batch?;
                self.sent_after = sent;
                self.parse(&frame)
            }
            None => Err(Error::Internal {
                consumer: self.id.clone(),
                message: "the reader ended unexpectedly".into(),
            }),
        }
    }

    /// When the read of the batch last returned by [`Reader::next`] was written: its entries
    /// have been pending at most since then.
    pub(crate) fn sent_after(&self) -> Instant {
        self.sent_after
    }

    fn parse(&self, frame: &[u8]) -> Result<Vec<ReadItem>> {
        protocol::parse_read_reply(frame)
            .map_err(|e| Error::from_redis(&self.id, "XREADGROUP", &self.id.stream, e))
    }

    /// Sets COUNT and the read-ahead for the reads written from now on (a wider read-ahead may
    /// write a read at once).
    pub(crate) fn set_pace(&self, pace: ReadPace) {
        if self.shared.lock().credits.set_pace(pace) {
            self.shared.notify.notify_one();
        }
    }

    /// Stops reading: no new reads are written, blocked ones are woken with `CLIENT UNBLOCK` (when
    /// permitted), and once the reader has ended and closed its connection, the entries the last
    /// reads fetched are returned, for the caller to release.
    pub(crate) async fn stop(mut self, control: &mut Control) -> Vec<ReadItem> {
        // Graceful: the task ends by itself (and closes its connection cleanly).
        if let Phase::Idle(idle) = std::mem::replace(&mut self.phase, Phase::Done) {
            idle.conn.close().await;
            return Vec::new();
        }
        self.shared.signal_stop();
        self.shared.wake.until(control, |_| false).await;
        let mut fetched = Vec::new();
        while let Ok(batch) = self.batches.try_recv() {
            match batch.and_then(|(frame, _)| self.parse(&frame)) {
                Ok(items) => fetched.extend(items),
                Err(e) => {
                    debug!(error = %e, "last read failed during stop; its entries stay pending")
                }
            }
        }
        fetched
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.signal_stop();
        // An idle connection closes as it is dropped with the reader.
        if let Phase::Live(task) = &self.phase {
            task.abort();
        }
    }
}
