//! The discovery task of one pattern consumer (`MultiStreamSpec::pattern`): a sweep on every
//! discovery interval (the first at once), then the streams found are added and those gone are
//! removed through the supervisor, as `Supervisor::add_stream` and `remove_stream` do; what the
//! last sweep found is kept for `Supervisor::stream_sets`. It ends with the supervisor's
//! cancellation, or when the supervisor refuses because it shuts down.
//!
//! Start positions: the streams of the first complete sweep get the spec's `start_id`; a stream
//! found by a later sweep is new since the consumer started, so its group is created at its first
//! entry (`0`) and the entries written before the sweep found it are read too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use ractor::ActorRef;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::plan::plan;
use super::{PatternSweep, SweepResult};
use crate::actors::supervisor_actor::{ask_multi, MultiMsg, SupMsg, SupervisorShared};
use crate::config::StartId;
use crate::error::{Error, Result};
use crate::id::ConsumerId;
use crate::multi_spec::MultiStreamSpec;

/// At most this many skipped keys are named in [`Discovered::other_type_examples`].
const EXAMPLES: usize = 10;

/// What discovery found last for one pattern consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Discovered {
    /// Keys matching the pattern that are not streams, at the last complete sweep.
    pub(crate) other_type_keys: usize,
    /// Some of them, sorted.
    pub(crate) other_type_examples: Vec<String>,
    /// Matching streams that are dead-letter streams of others, skipped.
    pub(crate) dead_letter_streams: usize,
    /// When the last sweep completed.
    pub(crate) last_sweep: Option<SystemTime>,
    /// Complete sweeps so far.
    pub(crate) sweeps: u64,
    /// The last sweep or add failure, cleared by the next complete sweep that applied cleanly.
    pub(crate) last_error: Option<String>,
    /// Since when sweeps fail (`None` once one completes): readiness looks at it.
    pub(crate) failing_since: Option<Instant>,
}

/// What discovery found, per (group, consumer); shared with the supervisor handle.
pub(crate) type DiscoveredSets = Mutex<BTreeMap<(String, String), Discovered>>;

/// The task's state.
pub(crate) struct Watch {
    spec: MultiStreamSpec,
    sweep: PatternSweep,
    shared: Arc<SupervisorShared>,
    actor: ActorRef<SupMsg>,
    /// Streams this task added (a stream added by hand is never removed by discovery).
    added: BTreeSet<String>,
    /// Keys already warned about as another type, so each is logged once.
    warned: BTreeSet<String>,
    /// The streams of the first complete sweep (`None` before it): their groups are created at the
    /// spec's `start_id`; a stream found later appeared after the consumer started, and its group
    /// is created at its first entry, so the entries written before a sweep found it are read.
    initial: Option<BTreeSet<String>>,
}

impl Watch {
    /// The watch of `spec`, which must have a pattern.
    pub(crate) fn new(
        spec: MultiStreamSpec,
        shared: Arc<SupervisorShared>,
        actor: ActorRef<SupMsg>,
    ) -> Option<Watch> {
        let sweep = PatternSweep::new(spec.key_pattern()?);
        Some(Watch {
            spec,
            sweep,
            shared,
            actor,
            added: BTreeSet::new(),
            warned: BTreeSet::new(),
            initial: None,
        })
    }

    fn key(&self) -> (String, String) {
        (
            self.spec.group().to_owned(),
            self.spec.consumer().to_owned(),
        )
    }

    fn update(&self, f: impl FnOnce(&mut Discovered)) {
        let mut sets = self.shared.discovered();
        f(sets.entry(self.key()).or_default());
    }

    /// Sweeps on every interval until `cancel` fires or the supervisor shuts down.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let every = self
            .spec
            .discovery_every()
            .unwrap_or(crate::multi_spec::DEFAULT_DISCOVERY_INTERVAL);
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            next = Instant::now() + every;
            let step = tokio::select! {
                _ = cancel.cancelled() => return,
                step = self.step() => step,
            };
            if let Err(Error::Supervisor(_)) = step {
                return;
            }
        }
    }

    /// One tick: goes on with the sweep and, when it is complete, applies it.
    async fn step(&mut self) -> Result<()> {
        match self.sweep.tick(&self.shared.backend).await {
            Ok(None) => Ok(()),
            Ok(Some(found)) => self.apply(found).await,
            Err(e) => {
                let e = crate::error::classify(None, "SCAN", self.sweep.pattern(), e);
                warn!(pattern = self.sweep.pattern(), group = self.spec.group(), consumer = self.spec.consumer(), error = %e, "stream discovery: the sweep failed; the next interval starts over");
                self.update(|d| {
                    d.last_error = Some(e.to_string());
                    d.failing_since.get_or_insert_with(Instant::now);
                });
                Ok(())
            }
        }
    }

    /// Adds the streams found, removes those gone, and records what the sweep found.
    async fn apply(&mut self, found: SweepResult) -> Result<()> {
        let (group, consumer) = self.key();
        let in_use: BTreeSet<String> = self
            .shared
            .multi()
            .streams_of(&group, &consumer)
            .into_iter()
            .collect();
        self.added.retain(|s| in_use.contains(s));
        let spec = &self.spec;
        let plan = plan(&found.streams, &in_use, &self.added, |s| {
            spec.dead_letter_stream_of(s)
        });
        self.warn_other_types(&found);
        if self.initial.is_none() {
            self.initial = Some(found.streams.clone());
        }
        let mut last_error = None;
        for stream in &plan.add {
            let id = ConsumerId::new(stream.as_str(), group.as_str(), consumer.as_str());
            let later = self.initial.as_ref().is_some_and(|i| !i.contains(stream));
            let start = later.then_some(StartId::Beginning);
            match self
                .ask(|reply| MultiMsg::AddStream(id, start, reply))
                .await
            {
                Ok(()) => {
                    self.added.insert(stream.clone());
                }
                Err(e @ Error::Supervisor(_)) => return Err(e),
                Err(e) => {
                    debug!(stream = %stream, error = %e, "stream discovery: not added");
                    last_error = Some(e.to_string());
                }
            }
        }
        for stream in &plan.remove {
            let id = ConsumerId::new(stream.as_str(), group.as_str(), consumer.as_str());
            info!(stream = %stream, group = %group, consumer = %consumer, "stream discovery: the stream is gone; removing it");
            match self.ask(|reply| MultiMsg::RemoveStream(id, reply)).await {
                Ok(()) | Err(Error::UnknownConsumer { .. }) => {
                    self.added.remove(stream);
                }
                Err(e) => return Err(e),
            }
        }
        self.update(|d| {
            d.other_type_keys = found.other_type.len();
            d.other_type_examples = found.other_type.iter().take(EXAMPLES).cloned().collect();
            d.dead_letter_streams = plan.dead_letter_streams.len();
            d.last_sweep = Some(SystemTime::now());
            d.sweeps += 1;
            d.last_error = last_error;
            d.failing_since = None;
        });
        Ok(())
    }

    fn warn_other_types(&mut self, found: &SweepResult) {
        self.warned.retain(|k| found.other_type.contains(k));
        for key in &found.other_type {
            if self.warned.insert(key.clone()) {
                warn!(key = %key, pattern = self.sweep.pattern(), group = self.spec.group(), consumer = self.spec.consumer(), "stream discovery: the key matches the pattern but is not a stream; skipped");
            }
        }
    }

    async fn ask(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<()>>) -> MultiMsg,
    ) -> Result<()> {
        ask_multi(&self.actor, msg)
            .await
            .unwrap_or_else(|| Err(Error::Supervisor("it stopped".to_owned())))
    }
}
