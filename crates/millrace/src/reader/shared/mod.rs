//! The shared reader: one `XREADGROUP GROUP g c COUNT n BLOCK b STREAMS s1 … sk > … >` read for
//! the streams of one (server, group, consumer name), on a Redis Cluster per (master, group,
//! consumer, slot), whose reply is routed to each stream's consumer.
//!
//! A multi-stream consumer is a set of single-stream consumers (one supervised actor per stream)
//! that share this read instead of owning a [`Reader`](super::Reader) each. Each joins with
//! [`SharedReaders::subscribe`] and gets a [`Subscription`], with the single reader's contract:
//! `next`, `sent_after`, `set_pace`, `stop`. The first subscriber starts the read
//! (a task with a socket of its own, [`task`], running the single reader's read loop,
//! [`drive`](super::drive), with reads of its own); the last one leaving ends it and closes the
//! socket. What is shared per stream, and decided without I/O, is in [`state`].
//!
//! - **Credits per stream.** Each stream has the single reader's credits: its read-ahead, 1 to
//!   [`FETCHED_AHEAD`](super::FETCHED_AHEAD), set with its consumer's
//!   [`ReadPace`](super::ReadPace). A read includes only the streams with a usable credit, so a
//!   slow stream never hoards entries; a stream that got nothing in a reply gets its credit back
//!   at once. A read goes out when some stream may be read; two are kept in flight while a reply
//!   had a stream's full COUNT, as the single reader does.
//! - **COUNT** of a read is the largest of its streams' counts, scaled down so that COUNT times
//!   the read's streams that had entries in their last reply stays within
//!   [`state::REPLY_BUDGET`]. Counted per read, not from the last reply as a whole: a reply of a
//!   few streams (the others out of credit) must not let the next read, with all of them, ask
//!   for a few streams' COUNT each. When more streams have entries than fit with
//!   [`state::SLICE`] each, a read takes those read least recently, so a backlog is read in large
//!   slices per stream; the others wait for the next read (and wake this one if it blocks). One
//!   COUNT for all: a stream may be handed up to the read's COUNT, more than its own.
//! - **Routing without copies.** The read task frames each reply and splits it into its streams'
//!   parts by headers alone ([`crate::protocol::split_read_reply`]); each subscriber parses its own
//!   part of the shared reply ([`crate::protocol::parse_stream_entries`]) on its own task.
//! - **`sent_after`** of a stream's batch is when the read that fetched it was written, so its
//!   entries have been pending at most since then (the ownership rule's freshness).
//! - **Errors.** `NOGROUP … key 'k' …` goes to stream `k` alone, which is then left out of the
//!   read until it subscribes again; a `NOGROUP` naming no stream of the read (none, or a name
//!   printed differently) to the streams `XPENDING` finds without their group; `WRONGTYPE` to
//!   the streams that `TYPE` finds are not streams; `UNBLOCKED` (a key deleted while the read
//!   blocked) is read again, and the next read names the key. A lost connection, or errors no
//!   stream explains four times in a row, is every subscriber's transient error; the next
//!   subscribe connects again.
//! - **Membership.** Subscribing and leaving work at any time; a stop returns once no read on the
//!   wire names its stream (those that do are woken). A stream that may be read but is
//!   not in the read at the head of the wire (it just joined, or its credit came back while the
//!   read blocked on other streams) wakes that read with `CLIENT UNBLOCK` through the control
//!   connection. Entries that arrive for a stream nobody subscribes to any more are released
//!   (idle time one day, so the next `XAUTOCLAIM` takes them), as are the untaken parts of a
//!   dropped subscription: never lost.
//! - **Quiet streams.** A stream without entries for a BLOCK's time is handed an empty batch, as
//!   a single reader's BLOCK timeout gives, so its consumer's health shows that reads go well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::wake::Wake;
use super::ReaderConfig;
use crate::connection::{Backend, Control, Node};
use crate::error::{Error, Result};
use crate::id::ConsumerId;

mod state;
mod subscription;
mod task;
#[cfg(test)]
mod tests;

pub(crate) use state::SLICE;
pub(crate) use subscription::Subscription;

use state::ReadState;

/// Which read a stream joins: the server (or master node) it is read from, the group and
/// consumer name, and on a cluster the stream's slot (a multi-key read stays in one slot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    node: String,
    group: Arc<str>,
    consumer: Arc<str>,
    slot: Option<u16>,
}

type Reads = Mutex<HashMap<ReadKey, Arc<SharedRead>>>;

/// Streams whose dropped subscription is not quiet yet: its untaken entries are being handed
/// back, or a read on the wire still names the stream. Cancelled when quiet.
type Quieting = Mutex<HashMap<ConsumerId, Arc<CancellationToken>>>;

/// The shared reads of one backend.
#[derive(Debug, Default)]
pub(crate) struct SharedReaders {
    reads: Arc<Reads>,
    quieting: Arc<Quieting>,
}

/// How far a read's connection has got.
#[derive(Debug, Clone)]
enum Connecting {
    Pending,
    Connected,
    Failed(redis::RedisError),
}

/// One shared read: what its task and its subscriptions share.
struct SharedRead {
    key: ReadKey,
    state: Mutex<ReadState>,
    /// Wakes the read task (membership, credits, stop).
    notify: Notify,
    connecting: watch::Sender<Connecting>,
    /// Wakes the read's blocked reads; its replies count the reads routed (and entries for
    /// streams that left released), in the order written: a stream leaving waits on them until
    /// no read on the wire names it.
    wake: Wake,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    control: Control,
    registry: Weak<Reads>,
    quieting: Arc<Quieting>,
}

impl std::fmt::Debug for SharedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRead")
            .field("key", &self.key)
            .finish()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain numbers and maps
/// updated in single steps).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedRead {
    fn state(&self) -> MutexGuard<'_, ReadState> {
        lock(&self.state)
    }

    /// Forgets this read in the registry (if it is still the one there), so the next subscriber
    /// starts a new one.
    fn unregister(self: &Arc<Self>) {
        if let Some(reads) = self.registry.upgrade() {
            let mut reads = lock(&reads);
            if reads.get(&self.key).is_some_and(|r| Arc::ptr_eq(r, self)) {
                reads.remove(&self.key);
            }
        }
    }
}

impl SharedReaders {
    /// Joins (or starts) the shared read for `config.id`'s (group, consumer) on `node`, and waits
    /// until its connection is up. Fails with the connection error.
    pub(crate) async fn subscribe(
        &self,
        backend: &Backend,
        node: &Node,
        config: ReaderConfig,
    ) -> Result<Subscription> {
        let id = config.id.clone();
        let key = ReadKey {
            node: node.address(),
            group: id.group.clone(),
            consumer: id.consumer.clone(),
            slot: backend
                .is_cluster()
                .then(|| crate::cluster::key_slot(id.stream.as_bytes())),
        };
        let (read, (token, rx)) = {
            let mut reads = lock(&self.reads);
            // Joined under the read's own lock with the check that it is open, so a read that
            // fails meanwhile (and tells its lanes, under that lock) cannot take a lane after.
            let joined = reads.get(&key).and_then(|read| {
                let mut state = read.state();
                state
                    .open()
                    .then(|| (read.clone(), state.join(id.clone(), config.count)))
            });
            match joined {
                Some(joined) => joined,
                None => {
                    let read = self.start(backend, node, &config, key.clone());
                    reads.insert(key, read.clone());
                    let lane = read.state().join(id.clone(), config.count);
                    (read, lane)
                }
            }
        };
        read.notify.notify_one();
        let subscription = Subscription::new(read.clone(), token, rx, id.clone());
        let mut connecting = read.connecting.subscribe();
        let outcome = connecting
            .wait_for(|c| !matches!(c, Connecting::Pending))
            .await
            .map(|c| c.clone());
        match outcome {
            Ok(Connecting::Failed(e)) => Err(Error::from_redis(&id, "CONNECT", &id.stream, e)),
            Ok(_) => Ok(subscription),
            Err(_) => Err(ended(&id)),
        }
    }

    /// Starts a read's task, which connects to `node` and reads.
    fn start(
        &self,
        backend: &Backend,
        node: &Node,
        config: &ReaderConfig,
        key: ReadKey,
    ) -> Arc<SharedRead> {
        let (connecting, _) = watch::channel(Connecting::Pending);
        let read = Arc::new(SharedRead {
            key,
            state: Mutex::new(ReadState::new(config.block)),
            notify: Notify::new(),
            connecting,
            wake: Wake::new(node.cluster_address()),
            task: Mutex::new(None),
            control: backend.control(),
            registry: Arc::downgrade(&self.reads),
            quieting: self.quieting.clone(),
        });
        let task_config = task::TaskConfig {
            node: node.clone(),
            connect_timeout: backend.connect_timeout(),
            command_timeout: config.command_timeout,
            block: config.block,
            read_timeout: config.read_timeout,
        };
        let task = tokio::spawn(task::run(read.clone(), task_config));
        *lock(&read.task) = Some(task.abort_handle());
        read
    }

    /// While a dropped subscription of `id.stream` is not quiet (its untaken entries are being
    /// handed back, or a read on the wire still names the stream), what is cancelled once it is.
    /// A replay of the stream waits for it: a late release never touches entries the replay
    /// took, and no read written for the old subscription delivers entries after it.
    pub(crate) fn quieting(&self, id: &ConsumerId) -> Option<CancellationToken> {
        lock(&self.quieting).get(id).map(|q| (**q).clone())
    }

    /// Shared reads running now, for tests.
    #[cfg(test)]
    fn running(&self) -> usize {
        lock(&self.reads).len()
    }
}

/// The error of a subscription whose read has ended: transient, so the consumer's session
/// subscribes again (and reconnects).
fn ended(id: &ConsumerId) -> Error {
    Error::from_redis(
        id,
        "XREADGROUP",
        &id.stream,
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the shared read of this stream ended",
        )
        .into(),
    )
}
