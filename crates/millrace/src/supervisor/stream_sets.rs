//! The [`Supervisor`]'s handle on multi-stream consumers: add one while running, add and remove
//! its streams, and list the streams it reads.

use super::Supervisor;
use crate::actors::supervisor_actor::{ask_multi, MultiMsg, MultiRegistry};
use crate::error::Result;
use crate::health::StreamSet;
use crate::id::ConsumerId;
use crate::multi_spec::MultiStreamSpec;

/// The registry of the multi-stream consumers given to the builder, each validated.
pub(super) fn registry(specs: &[MultiStreamSpec]) -> Result<MultiRegistry> {
    let mut registry = MultiRegistry::default();
    for spec in specs {
        spec.validate()?;
        registry.register(spec)?;
    }
    Ok(registry)
}

impl Supervisor {
    async fn ask_multi(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<()>>) -> MultiMsg,
    ) -> Result<()> {
        ask_multi(&self.actor, msg)
            .await
            .unwrap_or_else(|| Err(self.not_running()))
    }

    /// Adds and starts a consumer over many streams while running (see [`MultiStreamSpec`]).
    /// Refused when invalid, when a multi-stream consumer with its group and consumer name is
    /// supervised here already, or when one of its streams' consumers runs in this process
    /// ([`Error::DuplicateConsumer`](crate::Error::DuplicateConsumer)).
    ///
    /// ```no_run
    /// # async fn demo(app: millrace::Supervisor) -> millrace::Result<()> {
    /// use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry};
    /// app.add_multi_stream(
    ///     MultiStreamSpec::new(["a", "b"], "g", "c")
    ///         .handler(|_batch: Batch<RawEntry>| async { HandlerResult::Ok }),
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_multi_stream(&self, spec: MultiStreamSpec) -> Result<()> {
        self.ask_multi(|reply| MultiMsg::Add(Box::new(spec), reply))
            .await
    }

    /// Starts reading `stream` in the running multi-stream consumer `consumer` of `group`, with its
    /// spec's options and handler; the other streams go on undisturbed. Its group is created when
    /// missing. Refused with [`Error::UnknownConsumer`](crate::Error::UnknownConsumer) when no
    /// multi-stream consumer has these names, and with
    /// [`Error::DuplicateConsumer`](crate::Error::DuplicateConsumer) when it reads `stream` already.
    ///
    /// ```no_run
    /// # async fn demo(app: millrace::Supervisor) -> millrace::Result<()> {
    /// app.add_stream("billing", "billing-1", "tenant:3:events").await?;
    /// assert!(app.streams_of("billing", "billing-1").contains(&"tenant:3:events".to_owned()));
    /// # Ok(()) }
    /// ```
    pub async fn add_stream(&self, group: &str, consumer: &str, stream: &str) -> Result<()> {
        let id = ConsumerId::new(stream, group, consumer);
        self.ask_multi(|reply| MultiMsg::AddStream(id, None, reply))
            .await
    }

    /// Stops reading `stream` in the multi-stream consumer `consumer` of `group`: its in-flight
    /// batch finishes and is acknowledged, entries fetched but not handled are handed back to the
    /// group, and its health entry goes. The other streams go on undisturbed.
    ///
    /// ```no_run
    /// # async fn demo(app: millrace::Supervisor) -> millrace::Result<()> {
    /// app.remove_stream("billing", "billing-1", "tenant:3:events").await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove_stream(&self, group: &str, consumer: &str, stream: &str) -> Result<()> {
        let id = ConsumerId::new(stream, group, consumer);
        self.ask_multi(|reply| MultiMsg::RemoveStream(id, reply))
            .await
    }

    /// Every multi-stream consumer's streams, by group and consumer name: those read now, and for
    /// a [pattern](MultiStreamSpec::pattern) consumer what the last sweep found (the keys of
    /// other types it skipped, when it ran, its last error).
    ///
    /// ```no_run
    /// # async fn demo(app: millrace::Supervisor) {
    /// for set in app.stream_sets() {
    ///     println!(
    ///         "{}/{} reads {} streams; {} keys matching {:?} are not streams",
    ///         set.group,
    ///         set.consumer,
    ///         set.streams.len(),
    ///         set.other_type_keys,
    ///         set.pattern
    ///     );
    /// }
    /// # }
    /// ```
    pub fn stream_sets(&self) -> Vec<StreamSet> {
        self.shared.multi().sets()
    }

    /// The streams the multi-stream consumer `consumer` of `group` reads now, sorted (empty when
    /// there is none). A stream whose key was deleted is no longer among them.
    pub fn streams_of(&self, group: &str, consumer: &str) -> Vec<String> {
        self.shared.multi().streams_of(group, consumer)
    }
}
