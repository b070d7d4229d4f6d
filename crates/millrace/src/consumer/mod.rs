//! The consume loop of one consumer, in rooms: the `session` (group and permissions), the own-PEL
//! `replay`, the `live` loop, `handling` of one batch, the `acker`, the `reclaimer` (claims and
//! ownership), the `gauges`, and the pure decisions: `outcome` and the `pacer`. The loop runs
//! as a task owned by the consumer actor; this file holds what ties the rooms together: the retry
//! around sessions.

mod acker;
mod client;
mod cohort;
mod failures;
mod feed;
mod gauges;
mod gone;
mod handling;
mod keyed;
mod live;
mod outage;
mod outcome;
mod pacer;
mod parked;
mod reclaimer;
mod replay;
mod retry;
mod session;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::acked_delete::AckCommand;
use crate::cluster::{hash_tag_hint, Action, Colocation};
use crate::config::{backoff_with_jitter, ConsumerOptions, OnGroupLost};
use crate::connection::{Backend, Node};
use crate::entry::BatchMeta;
use crate::error::{Class, Error, Result};
use crate::handler::BatchRunner;
use crate::health::ConsumerState;
use crate::id::ConsumerId;
use crate::spec::ConsumerSpec;

use acker::Acker;
use client::ConsumerClient;
use cohort::Cadence;
pub(crate) use cohort::Cohort;
use failures::{FailureLog, WarnLimiter};
use gauges::Gauges;
use pacer::Pacer;
use parked::DeadLetterMover;
use reclaimer::Reclaimer;
use session::SessionState;
pub(crate) use stats::Stats;

/// First pause before reconnecting; it doubles up to `reconnect_backoff_max`.
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// How a consume loop ended without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Cancelled: the consumer was stopped.
    Stopped,
    /// The stream's key was deleted, and this stream of a multi-stream consumer is to be dropped.
    StreamGone,
}

/// What to do after a failed session.
enum Next {
    Retry,
    Stop,
    DropStream,
}

/// One consumer's consume loop and everything it keeps between sessions.
pub(crate) struct Consumer {
    id: ConsumerId,
    meta: BatchMeta,
    opts: ConsumerOptions,
    runner: Arc<dyn BatchRunner>,
    backend: Arc<Backend>,
    dlq: String,
    cancel: CancellationToken,
    client: ConsumerClient,
    stats: Stats,
    acker: Acker,
    reclaimer: Reclaimer,
    gauges: Gauges,
    session: SessionState,
    pacer: Pacer,
    failures: FailureLog,
    failure_warnings: WarnLimiter,
    /// Entries waiting out a retry delay (shared with the consumer's next incarnations).
    retries: retry::SharedSchedule,
    retry_warnings: WarnLimiter,
    /// Reconnects since the last successful read (for the backoff).
    retry_attempt: u32,
    /// On a cluster, the master the last session read from (`host:port`).
    owner: Option<String>,
    /// The server (or, on a cluster, the master) the last session located (`host:port`).
    node: Option<String>,
    /// On a cluster, the master a `MOVED` that ended the last session named: the next session
    /// goes there first, rather than asking a node's view of the slot.
    moved_to: Option<crate::cluster::NodeAddress>,
    /// This consumer's part in an outage of `node`, until it reads again.
    outage: Option<outage::Member>,
    /// Dead letters move in two steps (add, then acknowledge): the stream and its dead-letter
    /// stream are in different slots of a cluster.
    dead_letter_in_steps: bool,
    /// One stream of a multi-stream consumer: what its streams share, `None` for a consumer of
    /// its own.
    cohort: Option<Arc<Cohort>>,
    /// Dead-letter moves, and those waiting for their dead-letter stream.
    dead_letters: DeadLetterMover,
}

impl Consumer {
    pub(crate) fn new(
        spec: &ConsumerSpec,
        backend: Arc<Backend>,
        stats: Stats,
        cancel: CancellationToken,
        cohort: Option<Arc<Cohort>>,
    ) -> Result<Consumer> {
        let runner = spec
            .runner
            .clone()
            .ok_or_else(|| Error::config(Some(&spec.id), "handler", "is not set"))?;
        let id = spec.id.clone();
        let opts = spec.options.clone();
        let client = ConsumerClient::new(id.clone(), backend.control(), opts.reconnect_backoff_max);
        let dlq = spec.dead_letter_stream_name();
        let dead_letter_in_steps = backend.is_cluster()
            && !Colocation::of(id.stream.as_bytes(), dlq.as_bytes()).is_same_slot();
        let cadence = |every, per_second| match &cohort {
            Some(cohort) => Cadence::shared(every, &id.stream, cohort.clone(), per_second),
            None => Cadence::own(every),
        };
        let dead_letters = DeadLetterMover::new(
            id.clone(),
            dlq.clone(),
            dead_letter_in_steps,
            backend.control(),
            stats.clone(),
            backend.command_timeout(),
            opts.claim_min_idle,
        );
        Ok(Consumer {
            dead_letters,
            dead_letter_in_steps,
            meta: id.meta(),
            dlq,
            acker: Acker::new(client.clone(), stats.clone(), opts.largest_count())
                .with_command(AckCommand::new(opts.delete_acked))
                .on_line(cohort.as_ref().map(|c| c.ack_line())),
            reclaimer: Reclaimer::new(
                client.clone(),
                stats.clone(),
                &opts,
                cadence(opts.claim_interval, cohort::CLAIM_TICKS_PER_SECOND),
            ),
            gauges: Gauges::new(
                client.clone(),
                stats.clone(),
                cadence(opts.gauge_interval, cohort::GAUGE_REFRESHES_PER_SECOND),
            ),
            session: SessionState::new(opts.start_id.as_arg(), spec.membership),
            pacer: match cohort {
                Some(_) => Pacer::member(&opts),
                None => Pacer::new(&opts),
            },
            failures: FailureLog::default(),
            failure_warnings: WarnLimiter::default(),
            retries: stats.retry_schedule(),
            retry_warnings: WarnLimiter::default(),
            retry_attempt: 0,
            owner: None,
            node: None,
            moved_to: None,
            outage: None,
            cohort,
            id,
            opts,
            runner,
            backend,
            cancel,
            client,
            stats,
        })
    }

    /// Runs until cancelled or its stream is gone (Ok), or until an error the consumer cannot
    /// handle itself (Err: the actor fails and the supervisor decides).
    pub(crate) async fn run(mut self) -> Result<Ended> {
        let span = tracing::info_span!(parent: None, "consumer", stream = %self.id.stream, group = %self.id.group, consumer = %self.id.consumer);
        async move {
            self.log_dead_letter_path();
            loop {
                if self.cancel.is_cancelled() {
                    return Ok(Ended::Stopped);
                }
                let err = match self.session().await {
                    Ok(()) => return Ok(Ended::Stopped),
                    Err(e) => e,
                };
                match self.recover(err).await? {
                    Next::Retry => {}
                    Next::Stop => return Ok(Ended::Stopped),
                    Next::DropStream => return Ok(Ended::StreamGone),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// On a cluster, says once which way dead letters move, and how to make the move atomic: once
    /// per consumer, and once per multi-stream consumer (not per stream).
    fn log_dead_letter_path(&self) {
        if !self.backend.is_cluster() {
            return;
        }
        if let Some(cohort) = &self.cohort {
            if !cohort.first_dead_letter_note() {
                return;
            }
        }
        let set = self.cohort.is_some();
        if self.dead_letter_in_steps {
            let suggested = crate::dead_letter::colocated_name(&self.id.stream);
            let mut hint = hash_tag_hint(&self.id.stream, &self.dlq);
            if suggested != format!("{{{}}}", self.id.stream) {
                hint.push_str(&format!("; or, to keep matching a pattern such as `tenant:*:events`, put only the varying part in braces: `{suggested}`"));
            }
            if set {
                warn!(example_stream = %self.id.stream, dead_letter_stream = %self.dlq, %hint, "dead letters of this multi-stream consumer's streams move in two steps where a stream and its dead-letter stream hash to different slots (add to the dead-letter stream, then acknowledge; a retried move adds no second copy, a crash between the two leaves a copy in both streams); logged once for the set");
            } else {
                warn!(dead_letter_stream = %self.dlq, %hint, "dead letters move in two steps (add to the dead-letter stream, then acknowledge): a retried move adds no second copy; a crash between them leaves a copy in both streams, never in neither");
            }
        } else {
            info!(dead_letter_stream = %self.dlq, "dead letters move atomically: the stream and its dead-letter stream share a slot");
        }
    }

    /// One connected stretch: the group, the own-PEL replay, then live reads.
    async fn session(&mut self) -> Result<()> {
        self.stats.set_state(ConsumerState::Starting);
        self.prepare().await?;
        let node = self.locate().await?;
        self.replay_own_pending(&node).await?;
        if self.cancel.is_cancelled() {
            return Ok(());
        }
        self.live(&node).await
    }

    /// The node this session's own connections go to: the server, or on a cluster the master
    /// that serves the stream's slot now (looked up again in every session, so a consumer
    /// follows its stream across failovers and slot migrations).
    async fn locate(&mut self) -> Result<Node> {
        let node = match self.moved_to.take() {
            Some(at) => self.backend.node_at(&self.id.stream, &at).await,
            None => self.backend.node_for(&self.id.stream).await,
        }
        .map_err(|e| self.client.error("CLUSTER SHARDS", &self.id.stream, e))?;
        self.node = Some(node.address());
        if self.backend.is_cluster() {
            let address = node.address();
            if self.owner.as_deref() != Some(address.as_str()) {
                info!(node = %address, slot = crate::cluster::key_slot(self.id.stream.as_bytes()), "reading from the master that serves the stream");
                self.owner = Some(address);
            }
        }
        Ok(node)
    }

    /// After a failed session: decides by the error's class whether to reconnect, stop (cancelled
    /// while waiting), drop the stream (its key is gone, in a multi-stream consumer) or fail the
    /// consumer (Err).
    async fn recover(&mut self, err: Error) -> Result<Next> {
        // Best effort: an ack that cannot land means its entries come back through the replay.
        if let Err(e) = self.acker.flush().await {
            tracing::debug!(error = %e, "last ack of the session failed");
            self.acker.forget_held();
        }
        // Only a read cut off mid-reply lowers the read size: a reply that began and was cut, or a
        // read that lost its connection again before any read succeeded since the last loss (a
        // reply larger than the server's output buffer closes the connection before its first
        // byte, every time). A single lost connection is an outage (a failover, CLIENT KILL, a
        // reset), not a broken read.
        if let Error::Transient {
            command: "XREADGROUP",
            source,
            ..
        } = &err
        {
            if crate::reader::cut_mid_reply(source)
                || (self.retry_attempt > 0 && crate::reader::connection_lost(source))
            {
                self.pacer.cut_off();
            }
        }
        let delay = backoff_with_jitter(
            FIRST_RECONNECT_PAUSE,
            self.opts.reconnect_backoff_max,
            self.retry_attempt,
        );
        // On a cluster, an owner change ends the session like a lost connection: the next one
        // looks the owner up again and replays the own pending entries there. Never a group
        // recreation, and never a failure of the consumer (so not a restart).
        self.moved_to = self.moved_owner(&err);
        let topology = self.backend.is_cluster()
            && (matches!(err.cluster_action(), Some(action) if action != Action::Fatal)
                || err.class() == Class::Transient);
        let class = if topology {
            Class::Transient
        } else {
            err.class()
        };
        if class == Class::Transient {
            self.stats.set_outage_error(err.to_string());
        } else {
            self.stats.set_error(err.to_string());
        }
        match class {
            Class::Transient => {
                // One warning per server when an outage begins and one line when it ends
                // (`read_succeeded`), counting the streams; the attempts between are routine. On a
                // cluster the next session looks the stream's owner up again.
                if self.outage.is_none() {
                    let node = self.node.as_deref().unwrap_or("redis");
                    self.outage = Some(outage::Member::began(node, &self.id, &err, topology));
                } else {
                    tracing::debug!(error = %err, retry_in = ?delay, attempt = self.retry_attempt + 1, "redis still unavailable");
                }
                self.stats.reconnecting();
            }
            Class::GroupLost | Class::Fatal if self.stream_is_gone(&err).await => {
                warn!(error = %err, "the stream's key was deleted or no longer holds a stream; dropping the stream from its multi-stream consumer (the other streams go on)");
                return Ok(Next::DropStream);
            }
            Class::GroupLost => {
                if !self.opts.create_group {
                    return Err(self.group_missing(err.to_string()));
                }
                if self.opts.on_group_lost == OnGroupLost::Fail {
                    return Err(err);
                }
                error!(error = %err, "consumer group or stream vanished; recreating the group from the start of the stream");
                self.stats.group_recreated();
                self.session.group_lost();
                self.reclaimer.restart_scan();
            }
            Class::Fatal => return Err(err),
        }
        self.retry_attempt = self.retry_attempt.saturating_add(1);
        Ok(if self.pause(delay).await {
            Next::Retry
        } else {
            Next::Stop
        })
    }

    /// On a cluster, the master a `MOVED` in `err` names (an empty host being the node's that
    /// answered).
    fn moved_owner(&self, err: &Error) -> Option<crate::cluster::NodeAddress> {
        if !self.backend.is_cluster() {
            return None;
        }
        let mut owner = crate::cluster::moved_owner(err.redis_source()?)?;
        if owner.host.is_empty() {
            owner.host = crate::cluster::NodeAddress::parse(self.node.as_deref()?)?.host;
        }
        Some(owner)
    }

    /// Sleeps unless cancelled; false when cancelled.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
