//! The consume loop of one consumer, in rooms: the `session` (group and permissions), the own-PEL
//! `replay`, the `live` loop, `handling` of one batch, the `acker`, the `reclaimer` (claims and
//! ownership), the `gauges`, and the pure `outcome` decisions. The loop runs as a task owned by
//! the consumer actor; this file holds what ties the rooms together: the retry around sessions.

mod acker;
mod client;
mod failures;
mod gauges;
mod handling;
mod live;
mod outcome;
mod reclaimer;
mod replay;
mod session;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn, Instrument};

use crate::config::{backoff_with_jitter, ConsumerOptions, OnGroupLost};
use crate::connection::Backend;
use crate::entry::BatchMeta;
use crate::error::{Class, Error, Result};
use crate::handler::BatchRunner;
use crate::health::ConsumerState;
use crate::id::ConsumerId;
use crate::spec::ConsumerSpec;

use acker::Acker;
use client::ConsumerClient;
use failures::{FailureLog, WarnLimiter};
use gauges::Gauges;
use live::ReadSize;
use reclaimer::Reclaimer;
use session::SessionState;
pub(crate) use stats::Stats;

/// First pause before reconnecting; it doubles up to `reconnect_backoff_max`.
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(100);

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
    read_size: ReadSize,
    failures: FailureLog,
    failure_warnings: WarnLimiter,
    /// Reconnects since the last successful read (for the backoff).
    retry_attempt: u32,
}

impl Consumer {
    pub(crate) fn new(
        spec: &ConsumerSpec,
        backend: Arc<Backend>,
        stats: Stats,
        cancel: CancellationToken,
    ) -> Result<Consumer> {
        let runner = spec
            .runner
            .clone()
            .ok_or_else(|| Error::config(Some(&spec.id), "handler", "is not set"))?;
        let id = spec.id.clone();
        let opts = spec.options.clone();
        let client = ConsumerClient::new(id.clone(), backend.control(), opts.reconnect_backoff_max);
        Ok(Consumer {
            meta: id.meta(),
            dlq: spec.dead_letter_stream_name(),
            acker: Acker::new(client.clone(), stats.clone(), opts.count),
            reclaimer: Reclaimer::new(client.clone(), stats.clone(), &opts),
            gauges: Gauges::new(client.clone(), stats.clone(), opts.gauge_interval),
            session: SessionState::new(opts.start_id.as_arg()),
            read_size: ReadSize::new(opts.count),
            failures: FailureLog::default(),
            failure_warnings: WarnLimiter::default(),
            retry_attempt: 0,
            id,
            opts,
            runner,
            backend,
            cancel,
            client,
            stats,
        })
    }

    /// Runs until cancelled (Ok) or until an error the consumer cannot handle itself (Err: the
    /// actor fails and the supervisor decides).
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
                if !self.recover(err).await? {
                    return Ok(());
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One connected stretch: the group, the own-PEL replay, then live reads.
    async fn session(&mut self) -> Result<()> {
        self.stats.set_state(ConsumerState::Starting);
        self.prepare().await?;
        self.replay_own_pending().await?;
        if self.cancel.is_cancelled() {
            return Ok(());
        }
        self.live().await
    }

    /// After a failed session: decides by the error's class whether to reconnect (true), stop
    /// (false: cancelled while waiting) or fail the consumer (Err).
    async fn recover(&mut self, err: Error) -> Result<bool> {
        // Best effort: an ack that cannot land means its entries come back through the replay.
        if let Err(e) = self.acker.flush().await {
            tracing::debug!(error = %e, "last ack of the session failed");
        }
        self.stats.set_error(err.to_string());
        if let Error::Transient {
            command: "XREADGROUP",
            ..
        } = err
        {
            self.read_size.shrink();
        }
        let delay = backoff_with_jitter(
            FIRST_RECONNECT_PAUSE,
            self.opts.reconnect_backoff_max,
            self.retry_attempt,
        );
        match err.class() {
            Class::Transient => {
                // One warning when an outage begins and one when it ends (`read_succeeded`); the
                // attempts between are routine.
                if self.retry_attempt == 0 {
                    warn!(error = %err, retry_in = ?delay, "redis unavailable; will reconnect and replay own pending entries");
                } else {
                    tracing::debug!(error = %err, retry_in = ?delay, attempt = self.retry_attempt + 1, "redis still unavailable");
                }
                self.stats.reconnecting();
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
        Ok(self.pause(delay).await)
    }

    /// Sleeps unless cancelled; false when cancelled.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
