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
//! kind keeps alike (pace, credits in flight, configuration, stop timings) is in [`contract`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;

use crate::cluster::NodeAddress;
use crate::connection::{Backend, Control, Node};
use crate::error::{Error, Result};
use crate::id::ConsumerId;
use crate::protocol;
use crate::streams::ReadItem;

mod conn;
mod contract;
mod pending;
mod read_loop;
mod shared;

pub(crate) use conn::{connection_lost, cut_mid_reply};
use contract::{depth_after, CLOSE_WAIT, READS_IN_FLIGHT, UNBLOCK_EVERY};
pub(crate) use contract::{ReadPace, ReaderConfig, FETCHED_AHEAD};
pub(crate) use pending::PendingReader;
pub(crate) use shared::{SharedReaders, Subscription, SLICE};

/// The bytes of one complete RESP2 reply taken off the wire, parsed on the consume loop's side
/// (so the reader task goes back to the socket at once).
type Frame = Vec<u8>;

type Batches = mpsc::UnboundedSender<Result<Frame>>;

struct State {
    /// Reads that may still be written (see the module docs).
    credits: usize,
    stop: bool,
    /// COUNT of the next read written.
    count: usize,
    /// Batches the reader may fetch ahead of the handler: 1 to [`FETCHED_AHEAD`] (see
    /// [`ReadPace`]).
    ahead: usize,
}

impl State {
    /// Credits the reader may use now.
    fn usable(&self) -> usize {
        self.credits
            .saturating_sub(FETCHED_AHEAD.saturating_sub(self.ahead))
    }
}

/// What the consume loop and its reader share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the reader task.
    notify: Notify,
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
            return (0, s.count, true);
        }
        let n = s.usable().min(depth.saturating_sub(in_flight));
        s.credits -= n;
        (n, s.count, false)
    }

    /// Takes one credit for the read written right after a reply began, if allowed.
    fn take_one(&self, count: usize, in_flight: usize, depth: usize) -> bool {
        let mut s = self.lock();
        let go = !s.stop && in_flight < depth && s.usable() > 0 && s.count == count;
        if go {
            s.credits -= 1;
        }
        go
    }

    fn signal_stop(&self) {
        self.lock().stop = true;
        self.notify.notify_one();
    }
}

/// The consume loop's handle on its reader. [`Reader::stop`] stops it gracefully and returns what it
/// fetched. Dropping it (a failed session, a panicking handler) aborts the reader task at once:
/// its socket closes (TLS or not), so the server drops the blocked read instead of delivering
/// entries to a reader nobody listens to (they would wait for `claim_min_idle`).
pub(crate) struct Reader {
    batches: mpsc::UnboundedReceiver<Result<Frame>>,
    shared: Arc<Shared>,
    client_id: Option<i64>,
    /// The node the connection is to, on a cluster (where `CLIENT UNBLOCK` must be sent).
    node: Option<NodeAddress>,
    phase: Phase,
    /// Resolves (with an error) when the reader has ended and its connection is closed.
    finished: oneshot::Receiver<()>,
    id: ConsumerId,
    /// When the reader started, and when `next` returned each of the last [`FETCHED_AHEAD`]
    /// batches: see [`Reader::sent_after`].
    started: Instant,
    taken: VecDeque<Instant>,
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
    finished: oneshot::Sender<()>,
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
                credits: FETCHED_AHEAD,
                stop: false,
                count: config.count,
                ahead: FETCHED_AHEAD,
            }),
            notify: Notify::new(),
        });
        let (tx, batches) = mpsc::unbounded_channel();
        let (finished_tx, finished) = oneshot::channel::<()>();
        let id = config.id.clone();
        let (conn, client_id) = conn::Conn::open(backend, node, config.command_timeout)
            .await
            .map_err(|e| Error::from_redis(&id, "CONNECT", &id.stream, e))?;
        debug!(
            server = %node.address(),
            ?client_id,
            "read connection open"
        );
        Ok(Reader {
            batches,
            shared,
            client_id,
            node: node.cluster_address(),
            phase: Phase::Idle(Box::new(Idle {
                conn,
                config,
                tx,
                finished: finished_tx,
            })),
            finished,
            id,
            started: Instant::now(),
            taken: VecDeque::with_capacity(FETCHED_AHEAD + 1),
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
        let Idle {
            conn,
            config,
            tx,
            finished,
        } = *idle;
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let _finished = finished;
            read_loop::run(conn, &config, &shared, &tx).await;
        });
        self.phase = Phase::Live(task.abort_handle());
        self.started = Instant::now();
        self.sent_after = self.started;
    }

    /// The next batch (empty after a BLOCK timeout), in the order the reads were sent.
    pub(crate) async fn next(&mut self) -> Result<Vec<ReadItem>> {
        self.begin_live();
        match self.batches.recv().await {
            Some(batch) => {
                self.note_taken();
                self.shared.lock().credits += 1;
                self.shared.notify.notify_one();
                self.parse(batch)
            }
            None => Err(Error::Internal {
                consumer: self.id.clone(),
                message: "the reader ended unexpectedly".into(),
            }),
        }
    }

    /// The earliest moment the read of the batch last returned by [`Reader::next`] can have been
    /// sent, so its entries have been pending at most since then. It follows from the credits: a
    /// read is written only with a credit, the reader starts with [`FETCHED_AHEAD`] and gets one
    /// back per batch taken, so the read of batch `k` went out after batch `k - FETCHED_AHEAD` was
    /// taken (or after the start).
    pub(crate) fn sent_after(&self) -> Instant {
        self.sent_after
    }

    fn note_taken(&mut self) {
        self.sent_after = if self.taken.len() >= FETCHED_AHEAD {
            self.taken.pop_front().unwrap_or(self.started)
        } else {
            self.started
        };
        self.taken.push_back(Instant::now());
    }

    fn parse(&self, batch: Result<Frame>) -> Result<Vec<ReadItem>> {
        protocol::parse_read_reply(&batch?)
            .map_err(|e| Error::from_redis(&self.id, "XREADGROUP", &self.id.stream, e))
    }

    /// Sets COUNT and the read-ahead for the reads written from now on (a wider read-ahead may
    /// write a read at once).
    pub(crate) fn set_pace(&self, pace: ReadPace) {
        let ahead = pace.ahead.clamp(1, FETCHED_AHEAD);
        let more = {
            let mut s = self.shared.lock();
            let more = ahead > s.ahead;
            s.count = pace.count.max(1);
            s.ahead = ahead;
            more
        };
        if more {
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
        let mut client_id = self.client_id;
        let mut fetched = Vec::new();
        loop {
            if let Some(id) = client_id {
                if !unblock(control, self.node.as_ref(), id).await {
                    client_id = None;
                }
            }
            // Each woken read returns a reply; the read pipelined behind it may block next, so
            // every reply calls for another unblock, until the reader is done.
            tokio::select! {
                _ = &mut self.finished => break,
                Some(batch) = self.batches.recv() => self.keep(batch, &mut fetched),
                _ = tokio::time::sleep(UNBLOCK_EVERY), if client_id.is_some() => {}
            }
        }
        while let Ok(batch) = self.batches.try_recv() {
            self.keep(batch, &mut fetched);
        }
        fetched
    }

    fn keep(&self, batch: Result<Frame>, into: &mut Vec<ReadItem>) {
        match self.parse(batch) {
            Ok(items) => into.extend(items),
            Err(e) => debug!(error = %e, "last read failed during stop; its entries stay pending"),
        }
    }
}

/// Wakes the reader's blocked read, if any, through the control connection (on a cluster, routed
/// to the node the reader is connected to). Returns false when `CLIENT UNBLOCK` is not possible
/// (no permission, no connection): the read then returns when BLOCK runs out.
async fn unblock(control: &mut Control, node: Option<&NodeAddress>, client_id: i64) -> bool {
    match control.unblock(node, client_id).await {
        Ok(_) => true,
        Err(e) => {
            debug!(error = %e, "CLIENT UNBLOCK not possible; waiting for BLOCK to run out");
            false
        }
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
