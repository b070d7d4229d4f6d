//! Multi-stream consumers in the supervisor: which streams each (group, consumer) reads, the spec
//! a stream added later is made from, and the adding, removing and dropping of streams. Each
//! stream is an ordinary child; this file only keeps the cohorts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use super::{NameLease, SupMsg, SupState, SupervisorShared};
use crate::config::StartId;
use crate::consumer::Cohort;
use crate::discovery::{Discovered, Request, Watch};
use crate::error::{Error, Result};
use crate::health::{ConsumerState, StreamSet};
use crate::id::ConsumerId;
use crate::multi_spec::{DeadLetterRule, MultiStreamSpec};
use crate::reader::SharedReaders;
use crate::spec::ConsumerSpec;

/// The supervisor's requests about multi-stream consumers.
#[derive(Debug)]
pub(crate) enum MultiMsg {
    /// `add_multi_stream`: a new multi-stream consumer and its streams.
    Add(Box<MultiStreamSpec>, RpcReplyPort<Result<()>>),
    /// `add_stream`: one more stream for a running multi-stream consumer; with a start position
    /// other than the spec's when set (discovery: a stream found after the first sweep is read from
    /// its first entry).
    AddStream(ConsumerId, Option<StartId>, RpcReplyPort<Result<()>>),
    /// `remove_stream`: stop reading one stream.
    RemoveStream(ConsumerId, RpcReplyPort<Result<()>>),
}

/// Sends the request `msg` makes to the supervisor actor and waits for the answer; `None` when the
/// actor stopped before answering.
pub(crate) async fn ask_multi(
    actor: &ActorRef<SupMsg>,
    msg: impl FnOnce(RpcReplyPort<Result<()>>) -> MultiMsg,
) -> Option<Result<()>> {
    match actor.call(|reply| SupMsg::Multi(msg(reply)), None).await {
        Ok(ractor::rpc::CallResult::Success(r)) => Some(r),
        _ => None,
    }
}

/// Starts the discovery task of `spec` if it has a pattern, and serves the requests it hands over
/// on its channel (streams read, streams to add or remove, what it found) until the task ends
/// with the supervisor's cancellation. Both run on the supervisor's task tracker.
pub(crate) fn start_discovery(
    spec: MultiStreamSpec,
    shared: &Arc<SupervisorShared>,
    actor: &ActorRef<SupMsg>,
) {
    let key = (spec.group().to_owned(), spec.consumer().to_owned());
    let Some((watch, mut requests)) = Watch::new(spec, shared.backend.clone()) else {
        return;
    };
    shared.tasks.spawn(watch.run(shared.cancel.child_token()));
    let (shared, actor) = (shared.clone(), actor.clone());
    let stopped = || Err(Error::Supervisor("it stopped".to_owned()));
    shared.tasks.clone().spawn(async move {
        while let Some(request) = requests.recv().await {
            match request {
                Request::StreamsOf(reply) => {
                    let _ = reply.send(shared.multi().streams_of(&key.0, &key.1));
                }
                Request::Add(id, start, reply) => {
                    let added = ask_multi(&actor, |r| MultiMsg::AddStream(id, start, r)).await;
                    let _ = reply.send(added.unwrap_or_else(stopped));
                }
                Request::Remove(id, reply) => {
                    let removed = ask_multi(&actor, |r| MultiMsg::RemoveStream(id, r)).await;
                    let _ = reply.send(removed.unwrap_or_else(stopped));
                }
                Request::Report(found) => {
                    shared.multi().set_discovered(&key.0, &key.1, found);
                }
            }
        }
    });
}

/// The supervisor's record of one cohort (the streams of one multi-stream consumer).
#[derive(Debug)]
struct CohortRecord {
    /// What a stream added later is made from (`None` for streams added one by one with
    /// `add_consumer(spec.for_stream(..))`).
    template: Option<MultiStreamSpec>,
    streams: BTreeSet<Arc<str>>,
    cohort: Arc<Cohort>,
    /// What the last sweeps of a pattern consumer found (`None` before its first report, and
    /// for consumers of named streams).
    discovered: Option<Discovered>,
}

/// Every cohort (multi-stream consumer) of one supervisor, by (group, consumer), and the reads
/// their streams share.
#[derive(Debug, Default)]
pub(crate) struct MultiRegistry {
    cohorts: BTreeMap<(String, String), CohortRecord>,
    /// The shared reads of this supervisor's multi-stream consumers (one per server or cluster
    /// slot, group and consumer name); each [`Cohort`] holds it.
    readers: Arc<SharedReaders>,
}

impl MultiRegistry {
    fn record(&mut self, group: &str, consumer: &str) -> &mut CohortRecord {
        let readers = &self.readers;
        self.cohorts
            .entry((group.to_owned(), consumer.to_owned()))
            .or_insert_with(|| CohortRecord {
                template: None,
                streams: BTreeSet::new(),
                cohort: Cohort::new(readers.clone()),
                discovered: None,
            })
    }

    /// Records a new multi-stream consumer; refuses a second one with the same names.
    pub(crate) fn register(&mut self, spec: &MultiStreamSpec) -> Result<()> {
        let record = self.record(spec.group(), spec.consumer());
        if record.template.is_some() {
            return Err(Error::config(
                None,
                "consumer",
                format!(
                    "a multi-stream consumer with group `{}`, consumer `{}` is already supervised here: add streams to it with `Supervisor::add_stream`, or give this one another consumer name",
                    spec.group(),
                    spec.consumer()
                ),
            ));
        }
        record.template = Some(spec.clone());
        Ok(())
    }

    /// A stream joins its (group, consumer): returns what the streams share.
    pub(crate) fn join(&mut self, id: &ConsumerId) -> Arc<Cohort> {
        let record = self.record(&id.group, &id.consumer);
        record.streams.insert(id.stream.clone());
        record.cohort.set_streams(record.streams.len());
        record.cohort.clone()
    }

    /// A stream leaves its (group, consumer).
    pub(crate) fn leave(&mut self, id: &ConsumerId) {
        let key = (id.group.to_string(), id.consumer.to_string());
        let Some(record) = self.cohorts.get_mut(&key) else {
            return;
        };
        record.streams.remove(&id.stream);
        record.cohort.set_streams(record.streams.len());
        if record.streams.is_empty() && record.template.is_none() {
            self.cohorts.remove(&key);
        }
    }

    /// The multi-stream consumers that find their streams by pattern.
    pub(crate) fn patterns(&self) -> Vec<MultiStreamSpec> {
        self.cohorts
            .values()
            .filter_map(|m| m.template.clone())
            .filter(|t| t.key_pattern().is_some())
            .collect()
    }

    /// Every multi-stream consumer's streams read now, with its pattern if it has one (what
    /// discovery found is filled in by `Supervisor::stream_sets`).
    pub(crate) fn sets(&self) -> Vec<StreamSet> {
        self.cohorts
            .iter()
            .map(|((group, consumer), m)| {
                let found = m.discovered.clone().unwrap_or_default();
                StreamSet {
                    group: group.clone(),
                    consumer: consumer.clone(),
                    pattern: m
                        .template
                        .as_ref()
                        .and_then(|t| t.key_pattern())
                        .map(str::to_owned),
                    streams: m.streams.iter().map(|s| s.to_string()).collect(),
                    other_type_keys: found.other_type_keys,
                    other_type_examples: found.other_type_examples,
                    dead_letter_streams: found.dead_letter_streams,
                    unusable_name_keys: found.unusable_name_keys,
                    last_sweep: found.last_sweep,
                    sweeps: found.sweeps,
                    last_error: found.last_error,
                }
            })
            .collect()
    }

    /// Records what the last sweeps of the pattern consumer `consumer` of `group` found; a
    /// report for a consumer that is no longer supervised is dropped.
    pub(crate) fn set_discovered(&mut self, group: &str, consumer: &str, found: Discovered) {
        if let Some(record) = self
            .cohorts
            .get_mut(&(group.to_owned(), consumer.to_owned()))
        {
            record.discovered = Some(found);
        }
    }

    /// What the last sweeps of the pattern consumer `consumer` of `group` found, if it reported.
    pub(crate) fn discovered(&self, group: &str, consumer: &str) -> Option<&Discovered> {
        self.cohorts
            .get(&(group.to_owned(), consumer.to_owned()))
            .and_then(|m| m.discovered.as_ref())
    }

    /// The streams `consumer` of `group` reads now, sorted.
    pub(crate) fn streams_of(&self, group: &str, consumer: &str) -> Vec<String> {
        self.cohorts
            .get(&(group.to_owned(), consumer.to_owned()))
            .map(|m| m.streams.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    }

    /// The spec of stream `id.stream` of a running multi-stream consumer, checked against the
    /// streams it reads already.
    fn spec_for(&self, id: &ConsumerId, start: Option<StartId>) -> Result<ConsumerSpec> {
        let key = (id.group.to_string(), id.consumer.to_string());
        let Some((record, template)) = self
            .cohorts
            .get(&key)
            .and_then(|m| m.template.as_ref().map(|t| (m, t)))
        else {
            return Err(Error::UnknownConsumer {
                consumer: id.clone(),
            });
        };
        let mut spec = template.for_stream(&id.stream);
        if let Some(start) = start {
            spec.options.start_id = start;
        }
        spec.validate()?;
        let rule = DeadLetterRule::over(record.streams.iter().map(|s| &**s), |s| {
            template.dead_letter_stream_of(s)
        });
        match rule.clash(&id.stream) {
            Some(why) => Err(Error::config(
                Some(id),
                "stream",
                format!(
                    "{}; the stream is not added (remove the other one first, or set another `dead_letter_stream`)",
                    why.reason()
                ),
            )),
            None => Ok(spec),
        }
    }
}

impl SupState {
    /// Handles one [`MultiMsg`]; `Err` only when the supervisor gives up (as for `SupMsg::Add`).
    pub(super) async fn handle_multi(
        &mut self,
        myself: &ActorRef<SupMsg>,
        msg: MultiMsg,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            MultiMsg::Add(spec, reply) => {
                let result = match self.admit_multi(&spec) {
                    Ok(children) => {
                        for (child, lease) in children {
                            let id = self.insert(child, lease);
                            self.spawn_child(myself, &id).await?;
                        }
                        start_discovery((*spec).clone(), &self.shared, myself);
                        info!(
                            group = spec.group(),
                            consumer = spec.consumer(),
                            streams = spec.streams().len(),
                            "multi-stream consumer added"
                        );
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            MultiMsg::AddStream(id, start, reply) => {
                let result = match self.admit_stream(&id, start) {
                    Ok((child, lease)) => {
                        let id = self.insert(child, lease);
                        self.spawn_child(myself, &id).await?;
                        info!(consumer = %id, "stream added to its multi-stream consumer");
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            MultiMsg::RemoveStream(id, reply) => {
                let member = self
                    .children
                    .get(&id)
                    .is_some_and(|c| c.spec.membership.in_set());
                let result = if member {
                    self.remove_child(&id).await
                } else {
                    Err(Error::UnknownConsumer { consumer: id })
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    /// Validates a new multi-stream consumer and takes its streams' names; registers it.
    fn admit_multi(&mut self, spec: &MultiStreamSpec) -> Result<Vec<(ConsumerSpec, NameLease)>> {
        if self.shutting_down {
            return Err(Error::Supervisor("shutting down".to_owned()));
        }
        spec.validate()?;
        let children = leases(self.shared.backend.server(), spec)?;
        self.shared.multi().register(spec)?;
        Ok(children)
    }

    fn admit_stream(
        &mut self,
        id: &ConsumerId,
        start: Option<StartId>,
    ) -> Result<(ConsumerSpec, NameLease)> {
        if self.shutting_down {
            return Err(Error::Supervisor("shutting down".to_owned()));
        }
        let spec = self.shared.multi().spec_for(id, start)?;
        let lease = NameLease::take(self.shared.backend.server(), &spec.id)?;
        Ok((spec, lease))
    }

    /// A stream's key was deleted: its child has stopped; forget it, its health entry and its
    /// place in the multi-stream consumer. Nothing is restarted.
    pub(super) fn drop_gone_stream(&mut self, id: &ConsumerId) {
        let Some(child) = self.children.remove(id) else {
            return;
        };
        child.stats.set_state(ConsumerState::Stopped);
        self.forget(id);
        warn!(consumer = %id, stream = %id.stream, "the stream's key was deleted: dropped it from its multi-stream consumer; the other streams go on");
    }

    /// Removes a child's health entry and its place in a multi-stream consumer.
    pub(super) fn forget(&mut self, id: &ConsumerId) {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.shared.multi().leave(id);
    }
}

/// The child specs of `spec`'s streams, each with its name taken in this process.
fn leases(server: &str, spec: &MultiStreamSpec) -> Result<Vec<(ConsumerSpec, NameLease)>> {
    spec.streams()
        .iter()
        .map(|stream| {
            let child = spec.for_stream(stream);
            let lease = NameLease::take(server, &child.id)?;
            Ok((child, lease))
        })
        .collect()
}
