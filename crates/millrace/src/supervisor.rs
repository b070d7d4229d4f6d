//! The public face of the supervision tree: [`Supervisor::builder`], and the [`Supervisor`] handle to
//! add and remove consumers, read their health, wait for failure and shut down.

use std::fmt;
use std::sync::Arc;

use ractor::{ActorCell, ActorRef};
use tokio::sync::watch;

use crate::actors::supervisor_actor::{SupMsg, SupervisorShared};
use crate::config::RestartPolicy;
use crate::connection::ConnectionOptions;
use crate::error::{Error, Result};
use crate::health::ConsumerHealth;
use crate::id::ConsumerId;
use crate::spec::ConsumerSpec;

mod builder;
mod exposition;
#[cfg(feature = "http")]
mod http;
mod options;
mod ready;
mod stream_sets;

pub use builder::SupervisorBuilder;
pub use exposition::MetricsLabels;
pub use ready::DEFAULT_READY_GRACE;

/// A running supervision tree of consumers. Dropping it does not stop it; call
/// [`shutdown`](Supervisor::shutdown).
///
/// A cheap `Clone` handle (an actor reference and an `Arc`): share it with an HTTP server, a
/// signal handler or a control task. Every clone reads the same health and adds or removes the
/// same consumers; [`shutdown`](Supervisor::shutdown) from any clone stops the supervisor for all,
/// after which the other clones' calls that need it running (`add_consumer`, `add_stream`, …) fail
/// with [`Error::Supervisor`] ("it was shut down"), `is_ready()` is false, and `shutdown` again
/// returns at once.
#[derive(Clone)]
pub struct Supervisor {
    actor: ActorRef<SupMsg>,
    shared: Arc<SupervisorShared>,
    done: watch::Receiver<bool>,
    ready_grace: std::time::Duration,
    metrics_labels: MetricsLabels,
    http_addr: Option<std::net::SocketAddr>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("actor", &self.actor.get_id())
            .field("server", &self.shared.backend.server())
            .finish()
    }
}

impl Supervisor {
    /// Starts building a supervisor.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder {
            redis: None,
            connection: ConnectionOptions::default(),
            restart: RestartPolicy::default(),
            consumers: Vec::new(),
            multis: Vec::new(),
            ready_grace: DEFAULT_READY_GRACE,
            metrics_labels: MetricsLabels::default(),
            #[cfg(feature = "http")]
            http: None,
        }
    }

    fn not_running(&self) -> Error {
        self.failure()
            .unwrap_or_else(|| Error::Supervisor("it was shut down".to_owned()))
    }

    /// Adds and starts a consumer while running. A consumer with the same (stream, group, consumer)
    /// already running in this process is refused with [`Error::DuplicateConsumer`].
    pub async fn add_consumer(&self, spec: ConsumerSpec) -> Result<()> {
        match self
            .actor
            .call(|reply| SupMsg::Add(Box::new(spec), reply), None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => Err(self.not_running()),
        }
    }

    /// Stops a consumer gracefully (its in-flight batch finishes) and removes it.
    pub async fn remove_consumer(&self, id: &ConsumerId) -> Result<()> {
        match self
            .actor
            .call(|reply| SupMsg::Remove(id.clone(), reply), None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => Err(self.not_running()),
        }
    }

    /// Health of every consumer, sorted by id.
    pub fn health(&self) -> Vec<ConsumerHealth> {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|h| h.snapshot())
            .collect()
    }

    /// Health of one consumer.
    pub fn consumer_health(&self, id: &ConsumerId) -> Option<ConsumerHealth> {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|h| h.snapshot())
    }

    /// Why the supervisor gave up, if it did: [`Error::RestartLimit`] or [`Error::ConsumerFailed`],
    /// naming the consumer and keeping the consumer's own error as its source.
    pub fn failure(&self) -> Option<Error> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The supervisor actor, to link or monitor it from your own ractor actors.
    pub fn actor(&self) -> ActorCell {
        self.actor.get_cell()
    }

    /// Waits until the supervisor stops. `Err` when it gave up on a consumer: the error names it
    /// ([`Error::consumer`]), says whether only a change can fix it ([`Error::is_fatal`],
    /// [`Error::is_authentication_failure`]), and keeps the consumer's error as its source.
    pub async fn wait(&self) -> Result<()> {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
        match self.failure() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Graceful shutdown: every consumer stops reading, lets its in-flight batch finish (up to its
    /// `shutdown_timeout`), acknowledges it, hands fetched-but-unhandled entries back to the group, and
    /// stops. Returns once all are stopped; `Err` if the supervisor had given up on a consumer.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.actor.call(SupMsg::Shutdown, None).await;
        let result = self.wait().await;
        // Every consumer actor has stopped (or been killed) and aborted what outlived its deadline:
        // cancel whatever is left and wait until no task the supervisor started runs.
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        result
    }
}
