//! The consume loop of one consumer: group creation, own-PEL replay, read-ahead XREADGROUP, handler,
//! acks, XAUTOCLAIM recovery, dead letters, reconnects, and the graceful stop. It runs as a task
//! owned by the consumer actor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::{backoff_with_jitter, ConsumerOptions, OnGroupLost};
use crate::connection::Backend;
use crate::dead_letter::{self, DeadLetterInfo};
use crate::entry::{BatchMeta, EntryId, RawEntry, Source};
use crate::error::{Class, Error, Result};
use crate::handler::{BatchRunner, Outcome, RawItem};
use crate::health::{ConsumerState, HealthCell};
use crate::reader::{Reader, ReaderConfig, FETCHED_AHEAD};
use crate::spec::{ConsumerId, ConsumerSpec};
use crate::streams::{self, ReadItem};
use crate::telemetry::ConsumerMetrics;
use crate::HandlerResult;

/// Idle time given to entries released at shutdown, so the next XAUTOCLAIM of any consumer takes them.
const RELEASE_IDLE: Duration = Duration::from_secs(24 * 3600);
/// Most failure reasons remembered for dead letters.
const LAST_ERRORS_CAP: usize = 10_000;

/// `XPENDING key group`: count, smallest id, largest id, per-consumer counts.
type PendingSummary = (u64, redis::Value, redis::Value, Vec<(String, String)>);

pub(crate) struct Worker {
    id: ConsumerId,
    meta: BatchMeta,
    opts: ConsumerOptions,
    runner: Arc<dyn BatchRunner>,
    backend: Arc<Backend>,
    control: ConnectionManager,
    dlq: String,
    health: Arc<HealthCell>,
    metrics: ConsumerMetrics,
    cancel: CancellationToken,
    group_ready: bool,
    preflight_done: bool,
    /// COUNT in effect: halved after a read fails mid-reply (a reply too large for the client output
    /// buffer closes the connection after the entries went to the PEL), grown back after clean reads.
    read_count: usize,
    clean_reads: u32,
    /// How many coming batches to check for ownership first: the last batch was held so long that
    /// the batches read ahead may have been claimed meanwhile.
    verify_next: usize,
    /// Start id when (re)creating the group: the configured one first, `0` after the group vanished.
    create_from: String,
    claim_cursor: EntryId,
    next_claim: Instant,
    next_gauges: Instant,
    /// The XACK in flight, if any.
    ack_inflight: Option<tokio::task::JoinHandle<Result<()>>>,
    /// Ids the handler acknowledged that wait for the XACK in flight to return.
    ack_held: Vec<EntryId>,
    xinfo_allowed: bool,
    /// The last failure reason per pending entry, recorded with dead letters.
    last_errors: HashMap<EntryId, String>,
    retry_attempt: u32,
}

impl Worker {
    pub(crate) fn new(
        spec: &ConsumerSpec,
        backend: Arc<Backend>,
        health: Arc<HealthCell>,
        metrics: ConsumerMetrics,
        cancel: CancellationToken,
    ) -> Result<Worker> {
        let runner = spec
            .runner
            .clone()
            .ok_or_else(|| Error::config(Some(&spec.id), "handler", "is not set"))?;
        let id = spec.id.clone();
        let opts = spec.options.clone();
        let read_count = opts.count;
        Ok(Worker {
            read_count,
            meta: id.meta(),
            dlq: spec.dead_letter_stream_name(),
            control: backend.control(),
            create_from: opts.start_id.as_arg(),
            // Spread the first claim tick over one interval: hundreds of consumers starting together
            // would otherwise all scan the pending list at once.
            next_claim: Instant::now() + opts.claim_interval.mul_f64(rand::random::<f64>()),
            next_gauges: Instant::now(),
            xinfo_allowed: true,
            ack_inflight: None,
            ack_held: Vec::new(),
            id,
            opts,
            runner,
            backend,
            health,
            metrics,
            cancel,
            group_ready: false,
            preflight_done: false,
            clean_reads: 0,
            verify_next: 0,
            claim_cursor: EntryId::MIN,
            last_errors: HashMap::new(),
            retry_attempt: 0,
        })
    }

    /// Runs until cancelled (Ok) or until an error the worker cannot handle itself (Err: the actor fails
    /// and the supervisor decides).
    pub(crate) async fn run(mut self) -> Result<()> {
        let span = tracing::info_span!(parent: None, "consumer", stream = %self.id.stream, group = %self.id.group, consumer = %self.id.consumer);
        async move {
            loop {
                if self.cancel.is_cancelled() {
                    return Ok(());
                }
                let err = match self.session().await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                // Best effort: an ack that cannot land means its entries come back via the replay.
                if let Err(e) = self.flush_acks().await {
                    debug!(error = %e, "last ack of the session failed");
                }
                self.health.set_error(err.to_string());
                if let Error::Redis { command: "XREADGROUP", .. } = err {
                    self.shrink_reads();
                }
                match err.class() {
                    Class::Transient => {
                        let delay = backoff_with_jitter(Duration::from_millis(100), self.opts.reconnect_backoff_max, self.retry_attempt);
                        self.retry_attempt = self.retry_attempt.saturating_add(1);
                        warn!(error = %err, retry_in = ?delay, "redis unavailable; will reconnect and replay own pending entries");
                        self.health.set_state(ConsumerState::Reconnecting);
                        HealthCell::add(&self.health.reconnects, 1);
                        self.metrics.reconnects.increment(1);
                        if !self.pause(delay).await {
                            return Ok(());
                        }
                    }
                    Class::GroupLost => {
                        if !self.opts.create_group {
                            return Err(Error::Fatal {
                                consumer: Some(self.id.clone()),
                                command: "XREADGROUP",
                                reason: format!("consumer group `{}` does not exist on `{}` ({err})", self.id.group, self.id.stream),
                                hint: format!(
                                    "create it (`XGROUP CREATE {} {} $ MKSTREAM`) or set create_group = true",
                                    self.id.stream, self.id.group
                                ),
                            });
                        }
                        if self.opts.on_group_lost == OnGroupLost::Fail {
                            return Err(err);
                        }
                        error!(error = %err, "consumer group or stream vanished; recreating the group from the start of the stream");
                        HealthCell::add(&self.health.group_recreated, 1);
                        self.metrics.group_recreated.increment(1);
                        self.group_ready = false;
                        self.create_from = "0".to_owned();
                        self.claim_cursor = EntryId::MIN;
                        let delay = backoff_with_jitter(Duration::from_millis(100), self.opts.reconnect_backoff_max, self.retry_attempt);
                        self.retry_attempt = self.retry_attempt.saturating_add(1);
                        if !self.pause(delay).await {
                            return Ok(());
                        }
                    }
                    Class::Fatal => return Err(err),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Sleeps unless cancelled; false when cancelled.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    fn redis_err(&self, command: &'static str, key: &str, e: redis::RedisError) -> Error {
        Error::from_redis(&self.id, command, key, e)
    }

    /// One connected stretch: connect, ensure the group, replay the own PEL, then read live.
    async fn session(&mut self) -> Result<()> {
        self.health.set_state(ConsumerState::Starting);
        if !self.group_ready {
            self.ensure_group().await?;
            if !self.preflight_done {
                self.preflight().await?;
                self.preflight_done = true;
            }
        }
        self.replay_own_pending().await?;
        if self.cancel.is_cancelled() {
            return Ok(());
        }
        self.live().await
    }

    async fn ensure_group(&mut self) -> Result<()> {
        let stream = self.id.stream.clone();
        if self.opts.create_group {
            let created = streams::xgroup_create(
                &mut self.control,
                &stream,
                &self.id.group,
                &self.create_from,
                true,
            )
            .await
            .map_err(|e| self.redis_err("XGROUP CREATE", &stream, e))?;
            if created {
                info!(start = %self.create_from, "created consumer group");
            }
        }
        self.group_ready = true;
        Ok(())
    }

    /// Exercises every command the consumer will need, harmlessly, so a missing ACL permission fails
    /// the start with an error naming the command instead of surfacing hours later.
    async fn preflight(&mut self) -> Result<()> {
        let (stream, group, consumer) = (
            self.id.stream.clone(),
            self.id.group.clone(),
            self.id.consumer.clone(),
        );
        let none = EntryId::new(0, 1);
        let c = &mut self.control;
        let mut deleted = Vec::new();
        let checks: [(&'static str, redis::RedisResult<()>); 5] = [
            (
                "XACK",
                streams::xack(c, &stream, &group, &[none]).await.map(drop),
            ),
            (
                // A min-idle no entry can have: claims nothing, checks the permission (and drops any
                // deleted entries it scans, which are counted below).
                "XAUTOCLAIM",
                streams::xautoclaim(
                    c,
                    &stream,
                    &group,
                    &consumer,
                    Duration::from_secs(u64::from(u32::MAX)),
                    EntryId::MIN,
                    1,
                )
                .await
                .map(|r| deleted.extend(r.deleted)),
            ),
            (
                "XPENDING",
                streams::xpending_range(c, &stream, &group, None, none, none, 1, Some(&consumer))
                    .await
                    .map(drop),
            ),
            (
                "XCLAIM",
                redis::cmd("XCLAIM")
                    .arg(&*stream)
                    .arg(&*group)
                    .arg(&*consumer)
                    .arg(u64::MAX / 4)
                    .arg(none)
                    .arg("JUSTID")
                    .query_async::<redis::Value>(c)
                    .await
                    .map(drop),
            ),
            (
                "EVALSHA (dead-letter move)",
                dead_letter::check_permissions(c, &stream, &self.dlq, &group).await,
            ),
        ];
        for (command, result) in checks {
            if let Err(e) = result {
                let key = if command.starts_with("EVAL") {
                    self.dlq.clone()
                } else {
                    stream.to_string()
                };
                return Err(self.redis_err(command, &key, e));
            }
        }
        if !deleted.is_empty() {
            info!(
                entries = deleted.len(),
                "pending entries were deleted or trimmed; Redis dropped them from the pending list"
            );
            HealthCell::add(&self.health.deleted_while_pending, deleted.len());
            self.metrics
                .deleted_while_pending
                .increment(deleted.len() as u64);
        }
        Ok(())
    }

    /// Replays this consumer's own pending entries with an advancing cursor: each id is read once per
    /// replay, so entries the handler leaves unacked are left for XAUTOCLAIM instead of looping.
    async fn replay_own_pending(&mut self) -> Result<()> {
        let stream = self.id.stream.clone();
        let mut cursor = EntryId::MIN;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let cmd = streams::xreadgroup_cmd(
                &stream,
                &self.id.group,
                &self.id.consumer,
                self.read_count,
                None,
                &cursor.to_string(),
            );
            let items = match streams::read(&mut self.control, &cmd).await {
                Ok(items) => items,
                Err(e) if e.code() == Some("NOGROUP") && !self.opts.create_group => {
                    return Err(Error::Fatal {
                        consumer: Some(self.id.clone()),
                        command: "XREADGROUP",
                        reason: e.to_string(),
                        hint: format!("create the group (`XGROUP CREATE {} {} $ MKSTREAM`) or set create_group = true", self.id.stream, self.id.group),
                    })
                }
                Err(e) => return Err(self.redis_err("XREADGROUP", &stream, e)),
            };
            self.read_succeeded();
            let Some(last) = items.iter().rev().find_map(ReadItem::id) else {
                return Ok(());
            };
            if last <= cursor {
                return Ok(());
            }
            cursor = last;
            debug!(entries = items.len(), "replaying own pending entries");
            self.process(items, Source::Replay).await?;
        }
    }

    /// Halves COUNT after a failed read: if the reply was too large for the server's output buffer,
    /// a smaller one gets through instead of failing forever.
    fn shrink_reads(&mut self) {
        let smaller = (self.read_count / 2).max(1);
        if smaller != self.read_count {
            warn!(
                count = smaller,
                "a read failed mid-reply; reading smaller batches for a while"
            );
            self.read_count = smaller;
        }
        self.clean_reads = 0;
    }

    /// After enough clean reads, grows COUNT back towards the configured value.
    fn read_succeeded(&mut self) {
        self.health.read_ok();
        self.retry_attempt = 0;
        if self.read_count < self.opts.count {
            self.clean_reads += 1;
            if self.clean_reads >= 8 {
                self.clean_reads = 0;
                self.read_count = (self.read_count * 2).min(self.opts.count);
            }
        }
    }

    /// Reads new entries through the reader thread, which keeps reads in flight while batches are
    /// handled; batches come in the order the reads were sent.
    async fn live(&mut self) -> Result<()> {
        let start = Reader::start(
            &self.backend,
            ReaderConfig {
                id: self.id.clone(),
                count: self.read_count,
                block: self.opts.block,
                read_timeout: self.opts.effective_read_timeout(),
                command_timeout: self.backend.command_timeout(),
            },
        );
        // A stop while the reader connects (say, to an unresponsive server) need not wait for it.
        let mut reader = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Ok(()),
            r = start => r?,
        };
        self.health.set_state(ConsumerState::Running);
        loop {
            if Instant::now() >= self.next_claim {
                self.claim_tick().await?;
            }
            if Instant::now() >= self.next_gauges {
                self.refresh_gauges().await;
            }
            let timers = tokio::time::Instant::from_std(self.next_claim.min(self.next_gauges));
            let items = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    self.flush_acks().await?;
                    self.stop_reading(reader, Vec::new()).await;
                    return Ok(());
                }
                r = reader.next() => r?,
                // The XACK in flight returned while ids wait: send them now, not with the next batch.
                r = async { self.ack_inflight.as_mut().expect("checked").await }, if self.ack_inflight.is_some() && !self.ack_held.is_empty() => {
                    self.ack_inflight = None;
                    match r {
                        Ok(r) => r?,
                        Err(join) => return Err(Error::Internal { consumer: self.id.clone(), message: format!("ack task failed: {join}") }),
                    }
                    self.send_held_acks().await?;
                    continue;
                }
                _ = tokio::time::sleep_until(timers) => continue,
            };
            self.read_succeeded();
            reader.set_count(self.read_count);
            if items.is_empty() {
                continue;
            }
            if self.cancel.is_cancelled() {
                self.flush_acks().await?;
                self.stop_reading(reader, items).await;
                return Ok(());
            }
            let started = Instant::now();
            let to_ack = self.handle_items(items, Source::New).await?;
            reader.handled_in(started.elapsed());
            self.ack_behind(to_ack).await?;
            // Held so long that the batches read ahead, idle all that time, may have been claimed
            // by another consumer: check ownership before handling them.
            if started.elapsed() >= self.opts.claim_min_idle / 2 {
                self.verify_next = FETCHED_AHEAD;
            }
            if self.cancel.is_cancelled() {
                self.flush_acks().await?;
                self.stop_reading(reader, Vec::new()).await;
                return Ok(());
            }
        }
    }

    /// Stops the reader (waking its blocked reads with CLIENT UNBLOCK when permitted), and releases
    /// the entries fetched but not handled (`unhandled` plus what the last reads returned) to the
    /// other consumers.
    async fn stop_reading(&mut self, reader: Reader, mut unhandled: Vec<ReadItem>) {
        self.health.set_state(ConsumerState::Stopping);
        unhandled.extend(reader.stop(&mut self.control).await);
        if !unhandled.is_empty() {
            self.release(&unhandled).await;
        }
    }

    /// Hands fetched-but-unhandled entries to the other consumers at once: sets their idle time high
    /// so the next XAUTOCLAIM anywhere takes them (instead of after `claim_min_idle`).
    async fn release(&mut self, items: &[ReadItem]) {
        let ids: Vec<EntryId> = items.iter().filter_map(ReadItem::id).collect();
        if ids.is_empty() {
            return;
        }
        let stream = self.id.stream.clone();
        match streams::xclaim_set_idle(
            &mut self.control,
            &stream,
            &self.id.group,
            &self.id.consumer,
            &ids,
            RELEASE_IDLE,
        )
        .await
        {
            Ok(n) => info!(released = n, "released unhandled entries to the group"),
            Err(e) => {
                warn!(error = %e, entries = ids.len(), "could not release unhandled entries; they stay pending and come back after claim_min_idle")
            }
        }
    }

    /// Reads the group's pending count, this consumer's share, the oldest pending entry's idle time
    /// and the lag, into gauges and health. Best effort: a failure (or a missing XINFO permission)
    /// only leaves the figures stale.
    async fn refresh_gauges(&mut self) {
        self.next_gauges = Instant::now() + self.opts.gauge_interval;
        let (stream, group) = (self.id.stream.clone(), self.id.group.clone());
        let summary: redis::RedisResult<PendingSummary> = redis::cmd("XPENDING")
            .arg(&*stream)
            .arg(&*group)
            .query_async(&mut self.control)
            .await;
        let Ok((group_pending, _, _, consumers)) = summary else {
            return;
        };
        let consumer_pending = consumers
            .iter()
            .find(|(name, _)| *name == *self.id.consumer)
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        let oldest_pending_idle = streams::xpending_range(
            &mut self.control,
            &stream,
            &group,
            None,
            EntryId::MIN,
            EntryId::new(u64::MAX, u64::MAX),
            1,
            None,
        )
        .await
        .ok()
        .and_then(|rows| rows.first().map(|r| Duration::from_millis(r.idle_ms)));
        let mut lag = None;
        if self.xinfo_allowed {
            match self
                .control
                .xinfo_groups::<_, redis::streams::StreamInfoGroupsReply>(&*stream)
                .await
            {
                Ok(reply) => {
                    lag = reply
                        .groups
                        .into_iter()
                        .find(|g| g.name == *group)
                        .and_then(|g| g.lag)
                        .map(|l| l as u64)
                }
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
                    info!("no permission for XINFO GROUPS: the lag gauge stays empty (grant +xinfo|groups to fill it)");
                    self.xinfo_allowed = false;
                }
                Err(_) => {}
            }
        }
        self.metrics.group_pending.set(group_pending as f64);
        self.metrics.consumer_pending.set(consumer_pending as f64);
        if let Some(idle) = oldest_pending_idle {
            self.metrics.oldest_idle.set(idle.as_secs_f64());
        } else {
            self.metrics.oldest_idle.set(0.0);
        }
        if let Some(lag) = lag {
            self.metrics.lag.set(lag as f64);
        }
        self.health.set_group(crate::health::GroupGauges {
            group_pending,
            consumer_pending,
            oldest_pending_idle,
            lag,
            at: SystemTime::now(),
        });
    }

    /// One XAUTOCLAIM tick: a bounded number of calls, the cursor kept across ticks.
    async fn claim_tick(&mut self) -> Result<()> {
        self.next_claim = Instant::now() + self.opts.claim_interval;
        let stream = self.id.stream.clone();
        if let Some(after) = self.opts.reap_idle_consumers_after {
            let removed = streams::reap_idle_consumers(
                &mut self.control,
                &stream,
                &self.id.group,
                &self.id.consumer,
                after,
            )
            .await
            .map_err(|e| self.redis_err("EVAL (reap idle consumers)", &stream, e))?;
            if !removed.is_empty() {
                info!(consumers = ?removed, "reaped idle consumers that held no pending entries");
            }
        }
        for _ in 0..self.opts.claim_calls_per_tick {
            let reply = streams::xautoclaim(
                &mut self.control,
                &stream,
                &self.id.group,
                &self.id.consumer,
                self.opts.claim_min_idle,
                self.claim_cursor,
                self.opts.claim_count,
            )
            .await
            .map_err(|e| self.redis_err("XAUTOCLAIM", &stream, e))?;
            if !reply.deleted.is_empty() {
                info!(entries = reply.deleted.len(), "pending entries were deleted or trimmed; Redis dropped them from the pending list");
                HealthCell::add(&self.health.deleted_while_pending, reply.deleted.len());
                self.metrics
                    .deleted_while_pending
                    .increment(reply.deleted.len() as u64);
                for id in &reply.deleted {
                    self.last_errors.remove(id);
                }
            }
            self.claim_cursor = reply.next;
            if !reply.claimed.is_empty() {
                let n = reply.claimed.len();
                info!(entries = n, "claimed idle entries");
                HealthCell::add(&self.health.claimed, n);
                self.metrics.claimed.increment(n as u64);
                self.process(reply.claimed, Source::Claimed).await?;
            }
            if self.claim_cursor == EntryId::MIN || self.cancel.is_cancelled() {
                break;
            }
        }
        Ok(())
    }

    /// Retries a control-connection command on transient errors with capped backoff.
    async fn retry<T, F>(&mut self, command: &'static str, mut op: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut ConnectionManager) -> BoxFuture<'c, redis::RedisResult<T>>,
    {
        let stream = self.id.stream.clone();
        let mut attempt = 0u32;
        loop {
            match op(&mut self.control).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = self.redis_err(command, &stream, e);
                    if err.class() != Class::Transient || attempt >= 60 {
                        return Err(err);
                    }
                    let delay = backoff_with_jitter(
                        Duration::from_millis(50),
                        self.opts.reconnect_backoff_max,
                        attempt,
                    );
                    warn!(error = %err, retry_in = ?delay, "retrying");
                    self.health.set_error(err.to_string());
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn ack(&mut self, ids: Vec<EntryId>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (stream, group) = (self.id.stream.clone(), self.id.group.clone());
        let ids = Arc::new(ids);
        let for_op = ids.clone();
        self.retry("XACK", move |c| {
            let (stream, group, ids) = (stream.clone(), group.clone(), for_op.clone());
            async move { streams::xack(c, &stream, &group, &ids).await }.boxed()
        })
        .await?;
        for id in ids.iter() {
            self.last_errors.remove(id);
        }
        HealthCell::add(&self.health.acked, ids.len());
        self.metrics.acked.increment(ids.len() as u64);
        Ok(())
    }

    /// Acknowledges a batch without waiting: one XACK is in flight at a time, and the ids of
    /// batches handled meanwhile ride on the next one, sent when the one in flight returns. With
    /// small batches the loop therefore never waits for an ack round trip, and the server sees one
    /// XACK per round trip instead of one per batch. Ids held back are bounded by
    /// [`Worker::ack_hold_limit`]; past it, the loop waits. A failed XACK fails the session (the
    /// entries come back through the replay).
    async fn ack_behind(&mut self, ids: Vec<EntryId>) -> Result<()> {
        if !self.last_errors.is_empty() {
            for id in &ids {
                self.last_errors.remove(id);
            }
        }
        if ids.is_empty() && self.ack_held.is_empty() {
            return Ok(());
        }
        let busy = self.ack_inflight.as_ref().is_some_and(|t| !t.is_finished());
        if busy && self.ack_held.len() + ids.len() <= self.ack_hold_limit() {
            self.ack_held.extend(ids);
            return Ok(());
        }
        if busy {
            // The hold is full: wait for the XACK in flight, send what is held, and hold these
            // ids behind it. In flight and held each stay within the limit.
            self.send_held_acks().await?;
            self.ack_held.extend(ids);
            return Ok(());
        }
        self.ack_held.extend(ids);
        self.send_held_acks().await
    }

    /// At most this many acknowledged-by-the-handler ids wait for the XACK in flight: two
    /// batches. It bounds the entries a crash leaves handled but unacknowledged (see
    /// `docs/semantics.md`, where duplicates come from).
    fn ack_hold_limit(&self) -> usize {
        (self.opts.count * 2).min(10_000)
    }

    /// Waits for the XACK in flight, then sends the held ids in one XACK, in the background.
    async fn send_held_acks(&mut self) -> Result<()> {
        self.wait_ack_inflight().await?;
        if self.ack_held.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.ack_held);
        let mut control = self.control.clone();
        let (consumer, health, acked) = (
            self.id.clone(),
            self.health.clone(),
            self.metrics.acked.clone(),
        );
        let backoff_max = self.opts.reconnect_backoff_max.min(Duration::from_secs(1));
        self.ack_inflight = Some(tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                match streams::xack(&mut control, &consumer.stream, &consumer.group, &ids).await {
                    Ok(_) => {
                        HealthCell::add(&health.acked, ids.len());
                        acked.increment(ids.len() as u64);
                        return Ok(());
                    }
                    Err(e) => {
                        let err = Error::from_redis(&consumer, "XACK", &consumer.stream, e);
                        if err.class() != Class::Transient || attempt >= 10 {
                            return Err(err);
                        }
                        tokio::time::sleep(backoff_with_jitter(
                            Duration::from_millis(20),
                            backoff_max,
                            attempt,
                        ))
                        .await;
                        attempt += 1;
                    }
                }
            }
        }));
        Ok(())
    }

    /// Waits for the XACK in flight, if any.
    async fn wait_ack_inflight(&mut self) -> Result<()> {
        match self.ack_inflight.take() {
            None => Ok(()),
            Some(task) => match task.await {
                Ok(r) => r,
                Err(join) => Err(Error::Internal {
                    consumer: self.id.clone(),
                    message: format!("ack task failed: {join}"),
                }),
            },
        }
    }

    /// Sends every held ack and waits until all have landed.
    async fn flush_acks(&mut self) -> Result<()> {
        self.send_held_acks().await?;
        self.wait_ack_inflight().await
    }

    async fn dead_letter(
        &mut self,
        entry: RawEntry,
        deliveries: Option<u64>,
        reason: String,
    ) -> Result<()> {
        let (stream, group, consumer, dlq) = (
            self.id.stream.clone(),
            self.id.group.clone(),
            self.id.consumer.clone(),
            self.dlq.clone(),
        );
        let id = entry.id;
        let entry = Arc::new(entry);
        let reason_for_op = reason.clone();
        let moved = self
            .retry("EVALSHA (dead-letter move)", move |c| {
                let (stream, group, consumer, dlq, entry, reason) = (
                    stream.clone(),
                    group.clone(),
                    consumer.clone(),
                    dlq.clone(),
                    entry.clone(),
                    reason_for_op.clone(),
                );
                async move {
                    let info = DeadLetterInfo {
                        stream: &stream,
                        dlq: &dlq,
                        group: &group,
                        consumer: &consumer,
                        deliveries,
                        reason: &reason,
                    };
                    if entry.fields.is_empty() {
                        dead_letter::move_id(c, &info, entry.id).await
                    } else {
                        dead_letter::move_entry(c, &info, &entry).await
                    }
                }
                .boxed()
            })
            .await?;
        self.last_errors.remove(&id);
        if moved {
            error!(entry_id = %id, deliveries, dead_letter_stream = %self.dlq, %reason, "moved entry to the dead-letter stream");
            HealthCell::add(&self.health.dead_lettered, 1);
            self.metrics.dead_lettered.increment(1);
        }
        Ok(())
    }

    /// Delivery counts of replayed or claimed entries, from Redis's own counter (XPENDING). Ids
    /// missing from the answer are no longer pending for this consumer.
    async fn delivery_counts(&mut self, ids: &[EntryId]) -> Result<HashMap<EntryId, u64>> {
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok(HashMap::new());
        };
        let (stream, group, consumer) = (
            self.id.stream.clone(),
            self.id.group.clone(),
            self.id.consumer.clone(),
        );
        let limit = ids.len() * 2 + 16;
        let range = (first, last);
        let rows = self
            .retry("XPENDING", move |c| {
                let (stream, group, consumer) = (stream.clone(), group.clone(), consumer.clone());
                async move {
                    streams::xpending_range(
                        c,
                        &stream,
                        &group,
                        None,
                        range.0,
                        range.1,
                        limit,
                        Some(&consumer),
                    )
                    .await
                }
                .boxed()
            })
            .await?;
        let truncated = rows.len() >= limit;
        let mut counts: HashMap<EntryId, u64> =
            rows.into_iter().map(|r| (r.id, r.deliveries)).collect();
        if truncated {
            // Our pending list holds more between first and last than the batch: ask for the rest one by one.
            let missing: Vec<EntryId> = ids
                .iter()
                .copied()
                .filter(|id| !counts.contains_key(id))
                .collect();
            for id in missing {
                let (stream, group, consumer) = (
                    self.id.stream.clone(),
                    self.id.group.clone(),
                    self.id.consumer.clone(),
                );
                let rows = self
                    .retry("XPENDING", move |c| {
                        let (stream, group, consumer) =
                            (stream.clone(), group.clone(), consumer.clone());
                        async move {
                            streams::xpending_range(
                                c,
                                &stream,
                                &group,
                                None,
                                id,
                                id,
                                1,
                                Some(&consumer),
                            )
                            .await
                        }
                        .boxed()
                    })
                    .await?;
                counts.extend(rows.into_iter().map(|r| (r.id, r.deliveries)));
            }
        }
        Ok(counts)
    }

    fn remember_failure(&mut self, ids: &[EntryId], reason: &str) {
        if self.last_errors.len() > LAST_ERRORS_CAP {
            self.last_errors.clear();
        }
        for id in ids {
            self.last_errors.insert(*id, reason.to_owned());
        }
    }

    /// Handles one batch of read items: tombstones, poison entries, undecodable entries, the handler, acks.
    /// Handles a batch and acknowledges what the handler says, before returning.
    async fn process(&mut self, items: Vec<ReadItem>, source: Source) -> Result<()> {
        let to_ack = self.handle_items(items, source).await?;
        self.ack(to_ack).await
    }

    /// Handles one batch of read items: tombstones, poison entries, undecodable entries, the handler.
    /// Returns the ids to acknowledge.
    async fn handle_items(&mut self, items: Vec<ReadItem>, source: Source) -> Result<Vec<EntryId>> {
        let mut live: Vec<RawEntry> = Vec::with_capacity(items.len());
        let mut tombstones = Vec::new();
        let mut malformed = Vec::new();
        for item in items {
            match item {
                ReadItem::Entry(e) => live.push(e),
                ReadItem::Tombstone(id) => tombstones.push(id),
                ReadItem::Malformed {
                    id: Some(id),
                    reason,
                } => malformed.push((id, reason)),
                ReadItem::Malformed { id: None, reason } => {
                    warn!(%reason, "skipped a reply element without an id")
                }
            }
        }
        if !tombstones.is_empty() {
            info!(
                entries = tombstones.len(),
                "pending entries were deleted or trimmed; acknowledging them"
            );
            HealthCell::add(&self.health.deleted_while_pending, tombstones.len());
            self.metrics
                .deleted_while_pending
                .increment(tombstones.len() as u64);
            self.ack(tombstones).await?;
        }
        for (id, reason) in malformed {
            self.dead_letter(
                RawEntry::new(id, Vec::new()),
                None,
                format!("malformed entry: {reason}"),
            )
            .await?;
        }
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let n = live.len();
        HealthCell::add(&self.health.received, n);
        self.metrics.received.increment(n as u64);

        // Delivery counts: a `>` read is the first delivery; replays and claims ask Redis.
        let mut batch: Vec<RawItem> = Vec::with_capacity(n);
        let verify = source == Source::New && self.verify_next > 0;
        if verify {
            self.verify_next -= 1;
        }
        if source == Source::New && !verify {
            batch.extend(live.into_iter().map(|e| (e, Some(1))));
        } else {
            let ids: Vec<EntryId> = live.iter().map(|e| e.id).collect();
            let counts = self.delivery_counts(&ids).await?;
            let mut redelivered = 0;
            for e in live {
                match counts.get(&e.id) {
                    // No longer pending for us (acked or claimed meanwhile): skip it.
                    None => {
                        debug!(entry_id = %e.id, "entry no longer pending for this consumer; skipped")
                    }
                    Some(&d) if d > self.opts.max_deliveries => {
                        let last = self.last_errors.get(&e.id).cloned().unwrap_or_else(|| {
                            "unknown (failed in an earlier process or incarnation)".to_owned()
                        });
                        let reason = format!("delivered {d} times, more than max_deliveries = {}; last error: {last}", self.opts.max_deliveries);
                        self.dead_letter(e, Some(d), reason).await?;
                    }
                    Some(&d) => {
                        if d > 1 {
                            redelivered += 1;
                        }
                        batch.push((e, Some(d)));
                    }
                }
            }
            HealthCell::add(&self.health.redelivered, redelivered);
            self.metrics.redelivered.increment(redelivered as u64);
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(oldest) = batch.first().map(|(e, _)| e.id) {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            if source == Source::New && now_ms >= oldest.ms {
                self.metrics
                    .e2e_latency
                    .record((now_ms - oldest.ms) as f64 / 1000.0);
            }
        }

        let started = Instant::now();
        let ids: Vec<EntryId> = batch.iter().map(|(e, _)| e.id).collect();
        let delivered: Vec<Option<u64>> = batch.iter().map(|(_, d)| *d).collect();
        let runner = self.runner.clone();
        // One span per batch, inside the consumer span; its fields are part of the API.
        let span = tracing::info_span!(
            "batch",
            %source,
            entries = ids.len(),
            entry_id = %ids.first().copied().unwrap_or_default(),
            deliveries = delivered.first().copied().flatten(),
        );
        let run = runner
            .run(self.meta.clone(), source, batch, self.opts.handler_timeout)
            .instrument(span)
            .boxed();
        let report = self.with_heartbeat(run, &ids).await;
        self.metrics
            .handler_duration
            .record(started.elapsed().as_secs_f64());
        self.metrics.batch_size.record(report.handed.len() as f64);

        for (raw, deliveries, err) in report.undecodable {
            warn!(entry_id = %raw.id, error = %err, "entry cannot be decoded; moving it to the dead-letter stream");
            self.dead_letter(raw, deliveries, format!("cannot decode: {err}"))
                .await?;
        }

        let handed = report.handed;
        // Entries the handler dead-lettered itself: moved (and so acked) by the script.
        let mut explicit: HashSet<EntryId> = HashSet::new();
        for (id, reason) in report.dead_letters {
            if !handed.contains(&id) {
                warn!(entry_id = %id, "handler asked to dead-letter an id that is not in the batch; ignored");
                continue;
            }
            if explicit.insert(id) {
                let deliveries = ids.iter().position(|x| *x == id).and_then(|i| delivered[i]);
                self.dead_letter(
                    RawEntry::new(id, Vec::new()),
                    deliveries,
                    format!("dead-lettered by the handler: {reason}"),
                )
                .await?;
            }
        }
        let (to_ack, failure): (Vec<EntryId>, Option<String>) = match report.outcome {
            Outcome::NotRun => (Vec::new(), None),
            Outcome::Returned(HandlerResult::Ok) => (handed.clone(), None),
            Outcome::Returned(HandlerResult::Partial(ids)) => {
                let in_batch: HashSet<EntryId> = handed.iter().copied().collect();
                match ids.iter().find(|id| !in_batch.contains(id)) {
                    Some(foreign) => {
                        warn!(entry_id = %foreign, "handler returned Partial with an id that is not in the batch; acknowledging nothing of this batch");
                        (
                            Vec::new(),
                            Some(format!(
                                "Partial named id {foreign}, which is not in the batch"
                            )),
                        )
                    }
                    None => {
                        let mut seen = HashSet::with_capacity(ids.len());
                        let acked: Vec<EntryId> =
                            ids.into_iter().filter(|id| seen.insert(*id)).collect();
                        (
                            acked,
                            Some("left unacknowledged by a Partial result".to_owned()),
                        )
                    }
                }
            }
            Outcome::Returned(HandlerResult::Err(e)) => (Vec::new(), Some(e.to_string())),
            Outcome::Panicked(msg) => {
                let reason = format!("handler panicked: {msg}");
                self.note_failed(&handed, &reason);
                return Err(Error::HandlerPanicked {
                    consumer: self.id.clone(),
                    message: msg,
                });
            }
            Outcome::TimedOut(limit) => (
                Vec::new(),
                Some(format!(
                    "handler ran past handler_timeout ({})",
                    humantime::format_duration(limit)
                )),
            ),
        };
        let to_ack: Vec<EntryId> = to_ack
            .into_iter()
            .filter(|id| !explicit.contains(id))
            .collect();
        if let Some(reason) = failure {
            let mut acked: HashSet<EntryId> = to_ack.iter().copied().collect();
            acked.extend(explicit.iter().copied());
            let unacked: Vec<EntryId> = handed
                .iter()
                .copied()
                .filter(|id| !acked.contains(id))
                .collect();
            if !unacked.is_empty() {
                debug!(entries = unacked.len(), %reason, "batch entries left pending");
                self.note_failed(&unacked, &reason);
            }
        }
        Ok(to_ack)
    }

    /// Awaits the handler; while it runs longer than a third of `claim_min_idle`, refreshes the
    /// batch's idle time (`XCLAIM ... JUSTID`, no delivery bump) so other consumers do not claim
    /// entries that are still being worked on. `claim_min_idle` then means "gone", not "slow".
    async fn with_heartbeat<T>(&mut self, run: BoxFuture<'_, T>, ids: &[EntryId]) -> T {
        let every = (self.opts.claim_min_idle / 3).max(Duration::from_millis(1));
        let mut run = run;
        let mut next = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                out = &mut run => return out,
                _ = tokio::time::sleep_until(next) => {
                    next += every;
                    let mut control = self.control.clone();
                    let r = streams::xclaim_set_idle(&mut control, &self.id.stream, &self.id.group, &self.id.consumer, ids, Duration::ZERO).await;
                    match r {
                        Ok(n) => debug!(entries = n, "slow handler: refreshed the batch's idle time"),
                        Err(e) => warn!(error = %e, "slow handler: could not refresh the batch's idle time; it may be claimed by another consumer"),
                    }
                }
            }
        }
    }

    fn note_failed(&mut self, ids: &[EntryId], reason: &str) {
        HealthCell::add(&self.health.failed, ids.len());
        self.metrics.failed.increment(ids.len() as u64);
        self.health.set_error(reason.to_owned());
        self.remember_failure(ids, reason);
    }
}
