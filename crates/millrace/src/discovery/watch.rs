//! The discovery task of one pattern consumer (`MultiStreamSpec::pattern`): a sweep on every
//! discovery interval (the first at once), then the streams found are added and those gone are
//! removed through the supervisor, as `Supervisor::add_stream` and `remove_stream` do; what the
//! last sweep found is kept for `Supervisor::stream_sets`. It ends with the supervisor's
//! cancellation, or when the supervisor refuses because it shuts down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use ractor::ActorRef;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::plan::plan;
use super::{PatternSweep, SweepResult};
use crate::actors::supervisor_actor::{ask_multi, MultiMsg, SupMsg, SupervisorShared};
use crate::error::{Error, Result};
use crate::id::{ConsumerId, Printable};
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
    /// Matching keys whose names are not UTF-8 or hold control characters, skipped.
    pub(crate) unusable_name_keys: usize,
    /// When the last sweep completed.
    pub(crate) last_sweep: Option<SystemTime>,
    /// Complete sweeps so far.
    pub(crate) sweeps: u64,
    /// The last sweep or add failure, cleared by the next complete sweep that applied cleanly.
    pub(crate) last_error: Option<String>,
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
    /// Whether keys with unusable names were warned about (once per task).
    warned_names: bool,
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
            warned_names: false,
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
                self.update(|d| d.last_error = Some(e.to_string()));
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
        self.warn_unusable_names(&found);
        let mut last_error = None;
        for stream in &plan.add {
            let id = ConsumerId::new(stream.as_str(), group.as_str(), consumer.as_str());
            match self.ask(|reply| MultiMsg::AddStream(id, reply)).await {
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
            d.unusable_name_keys = found.not_utf8 + found.control_chars.len();
            d.last_sweep = Some(SystemTime::now());
            d.sweeps += 1;
            d.last_error = last_error;
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

    /// One warning, the first time a sweep finds keys whose names cannot be streams' names; the
    /// count is in `StreamSet::unusable_name_keys`.
    fn warn_unusable_names(&mut self, found: &SweepResult) {
        let count = found.not_utf8 + found.control_chars.len();
        if count == 0 || self.warned_names {
            return;
        }
        self.warned_names = true;
        let example = found
            .control_chars
            .first()
            .map(|k| Printable(k).to_string())
            .unwrap_or_else(|| "(not UTF-8)".to_owned());
        warn!(keys = count, example = %example, pattern = %Printable(self.sweep.pattern()), group = %Printable(self.spec.group()), consumer = %Printable(self.spec.consumer()), "stream discovery: keys match the pattern but their names are not UTF-8 or hold control characters (CR, LF, NUL, …), which Redis writes mangled in its replies; skipped and counted in `StreamSet::unusable_name_keys` (logged once); rename them to be read");
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
