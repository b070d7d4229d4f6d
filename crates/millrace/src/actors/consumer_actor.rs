//! The consumer actor: owns one consume-loop task, turns its failure into an actor failure, and on a
//! stop cancels it and waits for the in-flight batch (up to `shutdown_timeout`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::connection::Backend;
use crate::consumer::{Cohort, Consumer, Ended, Stats};
use crate::error::Error;
use crate::health::ConsumerState;
use crate::id::ConsumerId;
use crate::spec::ConsumerSpec;

pub(crate) struct ConsumerActor;

pub(crate) struct ConsumerArgs {
    pub(crate) spec: ConsumerSpec,
    pub(crate) backend: Arc<Backend>,
    pub(crate) stats: Stats,
    /// This incarnation's token, a child of the supervisor's.
    pub(crate) cancel: CancellationToken,
    /// Where the consume loop is spawned, so the supervisor can wait for it.
    pub(crate) tasks: TaskTracker,
    /// For a stream of a multi-stream consumer: what its streams share.
    pub(crate) cohort: Option<Arc<Cohort>>,
}

/// How a consumer actor fails when its stream's key was deleted and it is one stream of a
/// multi-stream consumer: the supervisor drops the stream instead of restarting it.
#[derive(Debug, thiserror::Error)]
#[error("{0}: the stream's key was deleted; the stream is dropped from its multi-stream consumer")]
pub(crate) struct StreamGone(pub(crate) ConsumerId);

#[derive(Debug)]
pub(crate) enum ConsumerMsg {
    /// The loop task ended.
    Exited(Result<Ended, Error>),
}

/// Cancels and aborts the loop task if the actor goes away without a graceful stop (kill, panic).
struct TaskGuard {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub(crate) struct ActorState {
    args: ConsumerArgs,
    guard: TaskGuard,
}

impl Actor for ConsumerActor {
    type Msg = ConsumerMsg;
    type State = ActorState;
    type Arguments = ConsumerArgs;

    // No I/O here: pre_start failures bypass supervision.
    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<ActorState, ActorProcessingErr> {
        Ok(ActorState {
            guard: TaskGuard {
                cancel: args.cancel.clone(),
                task: None,
            },
            args,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        let a = &state.args;
        a.stats.set_state(ConsumerState::Starting);
        let consumer = Consumer::new(
            &a.spec,
            a.backend.clone(),
            a.stats.clone(),
            state.guard.cancel.clone(),
            a.cohort.clone(),
        )?;
        let id = a.spec.id.clone();
        let task = a.tasks.spawn(async move {
            let result = match AssertUnwindSafe(consumer.run()).catch_unwind().await {
                Ok(result) => result,
                Err(payload) => Err(Error::Internal {
                    consumer: id,
                    message: crate::handler::panic_message(payload.as_ref()),
                }),
            };
            // Fails only while the actor is stopping, which is then the right outcome.
            let _ = myself.send_message(ConsumerMsg::Exited(result));
        });
        state.guard.task = Some(task);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ConsumerMsg,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Exited(Ok(Ended::Stopped)) => {
                state.guard.task = None;
                myself.stop(Some("consume loop finished".to_owned()));
                Ok(())
            }
            ConsumerMsg::Exited(Ok(Ended::StreamGone)) => {
                state.guard.task = None;
                Err(Box::new(StreamGone(state.args.spec.id.clone())))
            }
            ConsumerMsg::Exited(Err(e)) => {
                state.guard.task = None;
                Err(Box::new(e))
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        let health = state.args.stats.clone();
        if health.state() != ConsumerState::Failed {
            health.set_state(ConsumerState::Stopping);
        }
        state.guard.cancel.cancel();
        if let Some(mut task) = state.guard.task.take() {
            // The in-flight batch may finish; a read in flight is woken by CLIENT UNBLOCK or BLOCK.
            let deadline = state.args.spec.options.shutdown_timeout
                + state.args.spec.options.block
                + Duration::from_secs(1);
            if tokio::time::timeout(deadline, &mut task).await.is_err() {
                warn!(consumer = %state.args.spec.id, "in-flight batch did not finish within shutdown_timeout; abandoning it (its entries stay pending and come back)");
                task.abort();
            }
        }
        Ok(())
    }
}
