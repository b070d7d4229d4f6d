//! The [`SupervisorBuilder`]'s settings besides Redis: connection options, restart policy, the
//! consumers to start with, and whether `start` waits for Redis.

use super::SupervisorBuilder;
use crate::config::RestartPolicy;
use crate::connection::ConnectionOptions;
use crate::multi_spec::MultiStreamSpec;
use crate::spec::ConsumerSpec;

impl SupervisorBuilder {
    /// Connection timeouts shared by all consumers.
    pub fn connection_options(mut self, options: ConnectionOptions) -> Self {
        self.connection = options;
        self
    }

    /// How failed consumers are restarted and when the supervisor gives up.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Adds a consumer to start with the supervisor.
    pub fn consumer(mut self, spec: ConsumerSpec) -> Self {
        self.consumers.push(spec);
        self
    }

    /// Adds several consumers.
    pub fn consumers(mut self, specs: impl IntoIterator<Item = ConsumerSpec>) -> Self {
        self.consumers.extend(specs);
        self
    }

    /// Adds a consumer over many streams (one read for all of them) to start with the supervisor.
    /// Each stream becomes a consumer of its own in [`Supervisor::health`](super::Supervisor::health); see [`MultiStreamSpec`].
    ///
    /// ```no_run
    /// # async fn demo() -> millrace::Result<()> {
    /// use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry, Supervisor};
    ///
    /// let app = Supervisor::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .multi_stream(
    ///         MultiStreamSpec::new(["tenant:1:events", "tenant:2:events"], "billing", "billing-1")
    ///             .handler(|batch: Batch<RawEntry>| async move {
    ///                 println!("{} entries from {}", batch.len(), batch.meta.stream);
    ///                 HandlerResult::Ok
    ///             }),
    ///     )
    ///     .start()
    ///     .await?;
    /// assert_eq!(app.streams_of("billing", "billing-1"), ["tenant:1:events", "tenant:2:events"]);
    /// # Ok(()) }
    /// ```
    pub fn multi_stream(mut self, spec: MultiStreamSpec) -> Self {
        self.multis.push(spec);
        self
    }

    /// Whether [`start`](Self::start) waits for Redis instead of failing when it cannot reach it or
    /// is refused at start (see [`ConnectionOptions::wait_for_redis`]). Default `false`.
    pub fn wait_for_redis(mut self, wait: bool) -> Self {
        self.connection.wait_for_redis = wait;
        self
    }
}
