//! The discovery task of one pattern consumer (`MultiStreamSpec::pattern`): a sweep on every
//! discovery interval (the first at once), then the streams found are added and those gone are
//! removed through the supervisor, as `Supervisor::add_stream` and `remove_stream` do; what the
//! last sweep found is kept for `Supervisor::stream_sets`. It ends with the supervisor's
//! cancellation, or when the supervisor refuses because it shuts down.
//!
//! Start positions: the streams of the first complete sweep get the spec's `start_id`; a stream
//! found by a later sweep is new since the consumer started, so its group is created at its first
//! entry (`0`) and the entries written before the sweep found it are read too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::plan::plan;
use super::{PatternSweep, SweepResult};
use crate::config::StartId;
use crate::connection::Backend;
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
    /// Since when sweeps fail (`None` once one completes): readiness looks at it.
    pub(crate) failing_since: Option<Instant>,
}

/// What a discovery task asks of the supervisor, on the channel the task owns (made by
/// [`Watch::new`]): the supervisor reads it and answers on each reply channel. So discovery knows
/// nothing of the supervisor's actor, and the supervisor only what discovery hands it.
#[derive(Debug)]
pub(crate) enum Request {
    /// The streams the pattern consumer reads now.
    StreamsOf(oneshot::Sender<Vec<String>>),
    /// Add this stream to the pattern consumer (as `Supervisor::add_stream`).
    /// `start` is where its group begins when discovery creates it (`None`: the spec's `start_id`).
    Add(ConsumerId, Option<StartId>, oneshot::Sender<Result<()>>),
    /// Remove this stream, which discovery added and no longer finds (as
    /// `Supervisor::remove_stream`).
    Remove(ConsumerId, oneshot::Sender<Result<()>>),
    /// What discovery found last, for `Supervisor::stream_sets`.
    Report(Discovered),
}

/// The task's state.
pub(crate) struct Watch {
    spec: MultiStreamSpec,
    sweep: PatternSweep,
    backend: Arc<Backend>,
    requests: mpsc::UnboundedSender<Request>,
    /// What it found last, reported after every change.
    found: Discovered,
    /// Streams this task added (a stream added by hand is never removed by discovery).
    added: BTreeSet<String>,
    /// Keys already warned about as another type, so each is logged once.
    warned: BTreeSet<String>,
    /// Whether keys with unusable names were warned about (once per task).
    warned_names: bool,
    /// The streams of the first complete sweep (`None` before it): their groups are created at the
    /// spec's `start_id`; a stream found later appeared after the consumer started, and its group
    /// is created at its first entry, so the entries written before a sweep found it are read.
    initial: Option<BTreeSet<String>>,
}

impl Watch {
    /// The watch of `spec` (`None` without a pattern) and the channel of its requests, which
    /// ends when the task does.
    pub(crate) fn new(
        spec: MultiStreamSpec,
        backend: Arc<Backend>,
    ) -> Option<(Watch, mpsc::UnboundedReceiver<Request>)> {
        let sweep = PatternSweep::new(spec.key_pattern()?);
        let (requests, receiver) = mpsc::unbounded_channel();
        let watch = Watch {
            spec,
            sweep,
            backend,
            requests,
            found: Discovered::default(),
            added: BTreeSet::new(),
            warned: BTreeSet::new(),
            warned_names: false,
            initial: None,
        };
        Some((watch, receiver))
    }

    fn key(&self) -> (String, String) {
        (
            self.spec.group().to_owned(),
            self.spec.consumer().to_owned(),
        )
    }

    /// Changes what it found and reports it to the supervisor.
    fn update(&mut self, f: impl FnOnce(&mut Discovered)) {
        f(&mut self.found);
        let _ = self.requests.send(Request::Report(self.found.clone()));
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
        match self.sweep.tick(&self.backend).await {
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
        let (reply, streams) = oneshot::channel();
        let _ = self.requests.send(Request::StreamsOf(reply));
        let in_use: BTreeSet<String> = streams.await.map_err(|_| stopped())?.into_iter().collect();
        self.added.retain(|s| in_use.contains(s));
        let spec = &self.spec;
        let plan = plan(&found.streams, &in_use, &self.added, |s| {
            spec.dead_letter_stream_of(s)
        });
        self.warn_other_types(&found);
        self.warn_unusable_names(&found);
        if self.initial.is_none() {
            self.initial = Some(found.streams.clone());
        }
        let mut last_error = None;
        for stream in &plan.add {
            let id = ConsumerId::new(stream.as_str(), group.as_str(), consumer.as_str());
            let later = self.initial.as_ref().is_some_and(|i| !i.contains(stream));
            let start = later.then_some(StartId::Beginning);
            match self.ask(|reply| Request::Add(id, start, reply)).await {
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
            match self.ask(|reply| Request::Remove(id, reply)).await {
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
        request: impl FnOnce(oneshot::Sender<Result<()>>) -> Request,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The supervisor no longer reads the requests: it shuts down.
fn stopped() -> Error {
    Error::Supervisor("it stopped".to_owned())
}
