//! The supervisor actor: spawns consumer actors, restarts failed ones with backoff inside a restart
//! limit, escalates past it, and stops children gracefully on shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use crate::actors::consumer_actor::{ConsumerActor, ConsumerArgs, ConsumerMsg, StreamGone};
use crate::config::RestartPolicy;
use crate::consumer::{Cohort, Stats};
use crate::error::{Error, Result};
use crate::health::{ConsumerState, HealthCell};
use crate::id::ConsumerId;
use crate::spec::ConsumerSpec;

mod lease;
mod multi;
mod shared;

pub(crate) use lease::NameLease;
pub(crate) use multi::{ask_multi, MultiMsg, MultiRegistry};
pub(crate) use shared::SupervisorShared;

pub(crate) struct SupervisorActor;

pub(crate) struct SupArgs {
    pub(crate) shared: Arc<SupervisorShared>,
    pub(crate) policy: RestartPolicy,
    pub(crate) initial: Vec<(ConsumerSpec, NameLease)>,
}

#[derive(Debug)]
pub(crate) enum SupMsg {
    Add(Box<ConsumerSpec>, RpcReplyPort<Result<()>>),
    Remove(ConsumerId, RpcReplyPort<Result<()>>),
    Restart(ConsumerId, u64),
    Shutdown(RpcReplyPort<()>),
    Multi(MultiMsg),
}

struct Child {
    spec: ConsumerSpec,
    stats: Stats,
    actor: Option<ActorRef<ConsumerMsg>>,
    restarts: VecDeque<Instant>,
    generation: u64,
    /// For a stream of a multi-stream consumer: what its streams share.
    cohort: Option<Arc<Cohort>>,
    _lease: NameLease,
}

pub(crate) struct SupState {
    shared: Arc<SupervisorShared>,
    policy: RestartPolicy,
    initial: Vec<(ConsumerSpec, NameLease)>,
    children: HashMap<ConsumerId, Child>,
    by_actor: HashMap<ActorId, ConsumerId>,
    shutting_down: bool,
}

impl SupState {
    fn insert(&mut self, spec: ConsumerSpec, lease: NameLease) -> ConsumerId {
        let id = spec.id.clone();
        let health = self
            .shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_insert_with(|| Arc::new(HealthCell::new(id.clone())))
            .clone();
        health.set_state(ConsumerState::Starting);
        let cohort = spec
            .membership
            .in_set()
            .then(|| self.shared.multi().join(&id));
        self.children.insert(
            id.clone(),
            Child {
                spec,
                stats: Stats::new(&id, health),
                actor: None,
                restarts: VecDeque::new(),
                generation: 0,
                cohort,
                _lease: lease,
            },
        );
        id
    }

    async fn spawn_child(
        &mut self,
        myself: &ActorRef<SupMsg>,
        id: &ConsumerId,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let Some(child) = self.children.get_mut(id) else {
            return Ok(());
        };
        let args = ConsumerArgs {
            spec: child.spec.clone(),
            backend: self.shared.backend.clone(),
            stats: child.stats.clone(),
            cancel: self.shared.cancel.child_token(),
            tasks: self.shared.tasks.clone(),
            cohort: child.cohort.clone(),
        };
        match Actor::spawn_linked(None, ConsumerActor, args, myself.get_cell()).await {
            Ok((actor, _join)) => {
                self.by_actor.insert(actor.get_id(), id.clone());
                child.actor = Some(actor);
                Ok(())
            }
            // pre_start failures get no supervision event: treat them as a crash here.
            Err(e) => {
                let cause = Error::Internal {
                    consumer: id.clone(),
                    message: format!("could not start: {e}"),
                };
                self.child_down(myself, id, cause).await
            }
        }
    }

    /// A child stopped or failed: restart it after a backoff, or give up and escalate.
    async fn child_down(
        &mut self,
        myself: &ActorRef<SupMsg>,
        id: &ConsumerId,
        cause: Error,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if self.shutting_down {
            return Ok(());
        }
        let policy = self.policy.clone();
        let Some(child) = self.children.get_mut(id) else {
            return Ok(());
        };
        child.actor = None;
        child.stats.set_error(cause.to_string());
        // Restarting cannot fix a fatal error, and a lost group under `on_group_lost = fail`
        // is meant to stop the consumer.
        let fatal = cause.is_fatal() || matches!(cause, Error::GroupLost { .. });
        let cause = Arc::new(cause);
        let now = Instant::now();
        while child
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            child.restarts.pop_front();
        }
        let give_up = if fatal {
            Some(Error::ConsumerFailed {
                consumer: id.clone(),
                cause: cause.clone(),
            })
        } else if child.restarts.len() >= policy.max_restarts {
            Some(Error::RestartLimit {
                consumer: id.clone(),
                restarts: child.restarts.len(),
                window: policy.window,
                last_error: cause.clone(),
            })
        } else {
            None
        };
        if let Some(err) = give_up {
            child.stats.set_state(ConsumerState::Failed);
            error!(error = %err, "giving up on consumer; escalating");
            *self
                .shared
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(err.clone());
            self.stop_all().await;
            return Err(Box::new(err));
        }
        child.restarts.push_back(now);
        child.generation += 1;
        let delay = policy.backoff(u32::try_from(child.restarts.len() - 1).unwrap_or(u32::MAX));
        child.stats.restarting(child.restarts.len());
        warn!(consumer = %id, %cause, restart_in = ?delay, restarts_in_window = child.restarts.len(), "consumer failed; restarting");
        let (id, generation) = (id.clone(), child.generation);
        myself.send_after(delay, move || SupMsg::Restart(id, generation));
        Ok(())
    }

    /// Stops a child gracefully (its in-flight batch finishes) and forgets it.
    async fn remove_child(&mut self, id: &ConsumerId) -> Result<()> {
        let Some(mut child) = self.children.remove(id) else {
            return Err(Error::UnknownConsumer {
                consumer: id.clone(),
            });
        };
        if let Some(actor) = child.actor.take() {
            self.by_actor.remove(&actor.get_id());
            stop_child(actor, &child.spec, "removed").await;
        }
        child.stats.set_state(ConsumerState::Stopped);
        self.forget(id);
        info!(consumer = %id, "consumer removed");
        Ok(())
    }

    /// Stops every child gracefully and waits; kills those that do not stop in time.
    async fn stop_all(&mut self) {
        self.shutting_down = true;
        let stops = self.children.values_mut().filter_map(|child| {
            let actor = child.actor.take()?;
            let (spec, health) = (&child.spec, child.stats.clone());
            Some(async move {
                stop_child(actor, spec, "supervisor shutdown").await;
                if health.state() != ConsumerState::Failed {
                    health.set_state(ConsumerState::Stopped);
                }
            })
        });
        futures::future::join_all(stops.collect::<Vec<_>>()).await;
        for child in self.children.values() {
            if !matches!(child.stats.state(), ConsumerState::Failed) {
                child.stats.set_state(ConsumerState::Stopped);
            }
        }
        // Free the consumer names now, not when ractor drops this state (after the parent has
        // already heard of the stop), so a parent can start the same consumers again at once.
        self.children.clear();
        self.by_actor.clear();
    }
}

impl Actor for SupervisorActor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupMsg>,
        args: SupArgs,
    ) -> std::result::Result<SupState, ActorProcessingErr> {
        Ok(SupState {
            shared: args.shared,
            policy: args.policy,
            initial: args.initial,
            children: HashMap::new(),
            by_actor: HashMap::new(),
            shutting_down: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SupMsg>,
        state: &mut SupState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        for (spec, lease) in std::mem::take(&mut state.initial) {
            let id = state.insert(spec, lease);
            state.spawn_child(&myself, &id).await?;
        }
        let patterns = state.shared.multi().patterns();
        for spec in patterns {
            multi::start_discovery(spec, &state.shared, &myself);
        }
        info!(
            consumers = state.children.len(),
            server = state.shared.backend.server(),
            "millrace supervisor started"
        );
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        state: &mut SupState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Add(spec, reply) => {
                let result = match spec
                    .validate()
                    .and_then(|()| NameLease::take(state.shared.backend.server(), &spec.id))
                {
                    Ok(lease) if !state.shutting_down => {
                        let id = state.insert(*spec, lease);
                        state.spawn_child(&myself, &id).await?;
                        Ok(())
                    }
                    Ok(_) => Err(Error::Supervisor("shutting down".to_owned())),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupMsg::Remove(id, reply) => {
                let _ = reply.send(state.remove_child(&id).await);
            }
            SupMsg::Restart(id, generation) => {
                let due = state
                    .children
                    .get(&id)
                    .is_some_and(|c| c.actor.is_none() && c.generation == generation);
                if due && !state.shutting_down {
                    info!(consumer = %id, "restarting consumer");
                    state.spawn_child(&myself, &id).await?;
                }
            }
            SupMsg::Shutdown(reply) => {
                state.stop_all().await;
                state.shared.backend.close().await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".to_owned()));
            }
            SupMsg::Multi(msg) => state.handle_multi(&myself, msg).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        state: &mut SupState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                // Unknown ids are stale events of earlier incarnations.
                let Some(id) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                if err.is::<StreamGone>() {
                    state.drop_gone_stream(&id);
                    return Ok(());
                }
                let cause = match err.downcast::<Error>() {
                    Ok(e) => *e,
                    Err(other) => Error::Internal {
                        consumer: id.clone(),
                        message: other.to_string(),
                    },
                };
                state.child_down(&myself, &id, cause).await
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(id) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let reason = reason.unwrap_or_else(|| "terminated".to_owned());
                let cause = Error::Internal {
                    consumer: id.clone(),
                    message: format!("stopped unexpectedly: {reason}"),
                };
                state.child_down(&myself, &id, cause).await
            }
            _ => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupMsg>,
        state: &mut SupState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if !state.shutting_down {
            state.stop_all().await;
        }
        Ok(())
    }
}

/// Stops a consumer actor gracefully (its in-flight batch may finish), and kills it when it has not
/// stopped within `shutdown_timeout + block + 2 s`.
async fn stop_child(actor: ActorRef<ConsumerMsg>, spec: &ConsumerSpec, reason: &str) {
    let deadline = spec.options.shutdown_timeout + spec.options.block + Duration::from_secs(2);
    if actor
        .stop_and_wait(Some(reason.to_owned()), Some(deadline))
        .await
        .is_err()
    {
        let _ = actor.kill_and_wait(Some(Duration::from_secs(1))).await;
    }
}
