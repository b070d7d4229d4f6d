//! The shared read's task: connects, then runs the one read loop ([`crate::reader::drive`]) with
//! the shared read's reads: written as the streams' credits allow, each reply routed by its parts
//! ([`route`]), its own blocked read woken when a stream waits to be read; it ends on a stop
//! (closing its socket) or a lost connection (every subscriber told).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::RedisResult;

use super::state::{Delivery, Planned};
use super::{Connecting, SharedRead};
use crate::connection::Node;
use crate::error::Error;
use crate::reader::conn::Conn;
use crate::reader::drive::{self, Next, Reads};
use crate::reader::{READS_IN_FLIGHT, UNBLOCK_EVERY};
use crate::streams;

mod route;

/// A read on the wire this long without a reply is taken to be blocked: a stream waiting to be
/// read then wakes it with `CLIENT UNBLOCK`. (A read that is not blocked replies well within it,
/// so busy reads are not woken for nothing.)
const WAKE_AFTER: Duration = Duration::from_millis(5);

/// What a read's task is started with.
pub(super) struct TaskConfig {
    pub(super) node: Node,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) block: Duration,
    pub(super) read_timeout: Duration,
}

/// Connects and reads until stopped or the connection is lost.
pub(super) async fn run(read: Arc<SharedRead>, task_config: TaskConfig) {
    let _end = EndGuard(read.clone());
    let connected = Conn::connect(
        &task_config.node,
        task_config.connect_timeout,
        task_config.command_timeout,
    )
    .await;
    let (conn, client_id) = match connected {
        Ok(c) => c,
        Err(e) => {
            read.connecting.send_replace(Connecting::Failed(e.clone()));
            fail_all(&read, &e);
            return;
        }
    };
    read.wake.connected(client_id);
    read.connecting.send_replace(Connecting::Connected);
    tracing::debug!(server = %task_config.node.address(), ?client_id, "shared read connection open");
    let mut task = Task {
        conn,
        read: read.clone(),
        task_config,
        in_flight: VecDeque::new(),
        depth: READS_IN_FLIGHT,
        packed: None,
        unattributed: 0,
        tail_outside_head: false,
    };
    let read_timeout = task.task_config.read_timeout;
    match drive::run(&mut task, read_timeout).await {
        Ok(_) => task.conn.close().await,
        Err(e) => fail_all(&read, &e),
    }
}

/// Marks the read ended however its task ends (returned, or aborted by the last subscriber's
/// drop): new subscribers start a new read, and waiters learn of it.
struct EndGuard(Arc<SharedRead>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        // Lanes still here (the task panicked) learn that the read ended: their channels close.
        let lanes = {
            let mut state = self.0.state();
            state.ended = true;
            std::mem::take(&mut state.lanes)
        };
        drop(lanes);
        self.0.unregister();
        self.0.connecting.send_if_modified(|c| {
            let pending = matches!(c, Connecting::Pending);
            if pending {
                *c = Connecting::Failed(
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the shared read ended while connecting",
                    )
                    .into(),
                );
            }
            pending
        });
        self.0.wake.finish();
    }
}

/// Ends the read with `e` for every subscriber (each gets the error, classified for its own
/// stream), in one step with marking it ended, so no one joins it after.
fn fail_all(read: &Arc<SharedRead>, e: &redis::RedisError) {
    let lanes = {
        let mut state = read.state();
        state.ended = true;
        std::mem::take(&mut state.lanes)
    };
    read.unregister();
    if !lanes.is_empty() {
        if crate::reader::connection_lost(e) || crate::cluster::Action::for_error(e).is_some() {
            // A lost connection, or a cluster reply saying the slot moved or its node changed
            // (`MOVED` on Valkey after a failover, `UNBLOCKED`, `CLUSTERDOWN`): the streams'
            // outage line says it, once per server.
            tracing::debug!(error = %e, streams = lanes.len(), "the shared read lost its connection or its node; every stream in it reconnects");
        } else {
            tracing::warn!(error = %e, streams = lanes.len(), "the shared read failed; every stream in it reconnects");
        }
    }
    for lane in lanes.into_values() {
        let error = Error::from_redis(&lane.id, "XREADGROUP", &lane.id.stream, e.clone());
        let _ = lane.tx.send(Delivery::Failed(error));
    }
}

/// The read task's own state.
struct Task {
    conn: Conn,
    read: Arc<SharedRead>,
    task_config: TaskConfig,
    /// Reads on the wire, in the order written (replies come in that order).
    in_flight: VecDeque<Planned>,
    /// Reads to keep on the wire: two while a reply had a stream's full COUNT, else one.
    depth: usize,
    /// The last read's streams and COUNT, and its command, written again while they stay.
    packed: Option<(Planned, Vec<u8>)>,
    /// Error replies in a row not traced to a stream.
    unattributed: u32,
    /// A read queued behind the head one includes a stream the head does not: if the head
    /// blocks, that stream waits behind it, so the head is woken.
    tail_outside_head: bool,
}

impl Reads for Task {
    fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    async fn write(&mut self, limit: usize) -> RedisResult<()> {
        self.write_reads(limit).await
    }

    fn on_the_wire(&self) -> usize {
        self.in_flight.len()
    }

    fn stopped(&self) -> bool {
        self.read.state().stop
    }

    async fn idle(&mut self) {
        // Nothing may be read: wait for a credit, a subscriber, or the stop.
        self.read.notify.notified().await;
    }

    async fn await_reply(&mut self) -> RedisResult<()> {
        self.await_reply_waking().await
    }

    /// Routes the reply to the streams of the read it answers ([`route`]).
    async fn reply(&mut self, frame: Vec<u8>, _entries: usize) -> RedisResult<Next> {
        if let Some(read) = self.in_flight.pop_front() {
            self.refresh_tail();
            self.route(read, frame).await?;
        }
        Ok(Next::Read(self.depth))
    }
}

impl Task {
    /// Writes reads while fewer than `limit` are on the wire and some stream may be read.
    async fn write_reads(&mut self, limit: usize) -> RedisResult<()> {
        while self.in_flight.len() < limit {
            let Some(plan) = self.read.state().plan(Instant::now()) else {
                return Ok(());
            };
            self.send(plan).await?;
        }
        Ok(())
    }

    async fn send(&mut self, plan: Planned) -> RedisResult<()> {
        let same = self
            .packed
            .as_ref()
            .is_some_and(|(last, _)| last.count == plan.count && last.streams == plan.streams);
        if !same {
            let names: Vec<&str> = plan.streams.iter().map(|(n, _)| &**n).collect();
            let key = &self.read.key;
            let cmd = streams::xreadgroup_streams_cmd(
                &names,
                &key.group,
                &key.consumer,
                plan.count,
                Some(self.task_config.block),
            );
            self.packed = Some((plan.clone(), cmd.get_packed_command()));
        }
        if let Some((_, packed)) = &self.packed {
            self.conn.send(packed).await?;
        }
        self.in_flight.push_back(plan);
        self.refresh_tail();
        Ok(())
    }

    /// Whether a read behind the head includes a stream the head does not.
    fn refresh_tail(&mut self) {
        let mut reads = self.in_flight.iter();
        let Some(head) = reads.next() else {
            self.tail_outside_head = false;
            return;
        };
        let behind: Vec<&Planned> = reads.filter(|r| r.streams != head.streams).collect();
        self.tail_outside_head = !behind.is_empty() && {
            let in_head: HashSet<u64> = head.streams.iter().map(|(_, t)| *t).collect();
            behind
                .iter()
                .any(|r| r.streams.iter().any(|(_, t)| !in_head.contains(t)))
        };
    }

    /// Waits until a reply begins to arrive (within `read_timeout`). Meanwhile, when a stream may
    /// be read that the read at the head does not include (a stream in no read on the wire, or in
    /// one queued behind the head, which waits if the head blocks), wakes the head once it has been on
    /// the wire [`WAKE_AFTER`] (and again every [`UNBLOCK_EVERY`], in case the unblock reached
    /// the server before the read blocked).
    async fn await_reply_waking(&mut self) -> RedisResult<()> {
        if !self.conn.buf.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.task_config.read_timeout;
        let mut next_unblock = None;
        loop {
            let wake_at = self.wake_at(next_unblock);
            let unblock = tokio::select! {
                r = self.conn.fill(deadline.saturating_duration_since(Instant::now())) => return r,
                _ = self.read.notify.notified() => false,
                _ = sleep_until(wake_at), if wake_at.is_some() => true,
            };
            if unblock {
                self.unblock().await;
                next_unblock = Some(Instant::now() + UNBLOCK_EVERY);
            }
        }
    }

    /// When to send `CLIENT UNBLOCK` next, if a stream waits to be read: one in no read on the
    /// wire, or one in a read queued behind the head.
    fn wake_at(&self, next_unblock: Option<Instant>) -> Option<Instant> {
        if self.read.wake.client_id().is_none()
            || !(self.tail_outside_head || self.read.state().wake)
        {
            return None;
        }
        let head = self.in_flight.front()?;
        Some(next_unblock.unwrap_or(head.sent + WAKE_AFTER))
    }

    async fn unblock(&mut self) {
        let mut control = self.read.control.clone();
        self.read.wake.unblock(&mut control).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
