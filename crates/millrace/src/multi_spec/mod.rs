//! What to run over many streams: one (group, consumer) pair, its streams (named, or found by a
//! key pattern), and the options and handler every stream's consumer shares.

mod dead_letters;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConsumerOptions, OnGroupLost, StartId};
use crate::decode::Decode;
use crate::handler::{BatchRunner, Handler, TypedRunner};
use crate::id::ConsumerId;
use crate::spec::{dead_letter_stream_of, ConsumerSpec, Membership};
pub(crate) use dead_letters::DeadLetterRule;

/// How often a pattern is matched against the keys when no interval is set.
#[allow(dead_code, reason = "read by pattern discovery")]
pub(crate) const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest discovery interval accepted.
const MIN_DISCOVERY_INTERVAL: Duration = Duration::from_millis(10);

/// Where a multi-stream consumer's streams come from.
#[derive(Debug, Clone)]
enum Streams {
    /// These streams, in this order.
    Named(Vec<String>),
    /// The streams whose keys match this pattern (`SCAN … MATCH`), looked for on an interval.
    Pattern(String),
}

/// One consumer (a group and a consumer name) over many streams: `XREADGROUP … STREAMS s1 s2 … > >`.
///
/// Each stream still gets a supervised consumer of its own, with everything that is per stream
/// kept per stream: its group, its own-pending replay, acknowledgements, `Partial` ids, the
/// `XAUTOCLAIM` cursor, the poison cap, its dead-letter stream (`<stream>:dlq` by default), gauges,
/// metrics labels and health entry. A handler panic restarts that stream's consumer alone. What
/// the streams share is the read. Handlers see each batch's stream in
/// [`BatchMeta::stream`](crate::BatchMeta::stream); a batch never mixes streams.
///
/// ```
/// use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry};
///
/// let spec = MultiStreamSpec::new(["tenant:1:events", "tenant:2:events"], "billing", "billing-1")
///     .count(100)
///     .handler(|batch: Batch<RawEntry>| async move {
///         println!("{} entries from {}", batch.len(), batch.meta.stream);
///         HandlerResult::Ok
///     });
/// assert!(spec.validate().is_ok());
/// assert_eq!(spec.streams(), ["tenant:1:events", "tenant:2:events"]);
/// // Each stream's own consumer, as the supervisor runs it:
/// let one = spec.for_stream("tenant:2:events");
/// assert_eq!(one.dead_letter_stream_name(), "tenant:2:events:dlq");
/// ```
///
/// Start it with [`SupervisorBuilder::multi_stream`](crate::SupervisorBuilder::multi_stream) or
/// [`Supervisor::add_multi_stream`](crate::Supervisor::add_multi_stream); add and remove streams
/// while it runs with [`Supervisor::add_stream`](crate::Supervisor::add_stream) and
/// [`Supervisor::remove_stream`](crate::Supervisor::remove_stream).
#[derive(Clone)]
pub struct MultiStreamSpec {
    streams: Streams,
    /// Set by [`MultiStreamSpec::discovery_interval`]; refused by `validate` on named streams.
    discovery_interval: Option<Duration>,
    group: Arc<str>,
    consumer: Arc<str>,
    pub(crate) options: ConsumerOptions,
    runner: Option<Arc<dyn BatchRunner>>,
}

impl fmt::Debug for MultiStreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiStreamSpec")
            .field("streams", &self.streams)
            .field("discovery_interval", &self.discovery_interval)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("options", &self.options)
            .field("handler", &self.runner.as_ref().map(|r| r.type_name()))
            .finish()
    }
}

impl MultiStreamSpec {
    /// A consumer named `consumer` in `group` over `streams`, with default options and no handler
    /// yet. Each stream's group is created when missing (as for a [`ConsumerSpec`]).
    pub fn new<I, S>(streams: I, group: impl Into<String>, consumer: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MultiStreamSpec::with_streams(
            Streams::Named(streams.into_iter().map(Into::into).collect()),
            group.into(),
            consumer.into(),
        )
    }

    /// A consumer named `consumer` in `group` over every stream whose key matches `pattern` (the
    /// glob of `SCAN … MATCH`, for example `tenant:*:events`), looked for on every
    /// [`discovery_interval`](Self::discovery_interval). It starts with no stream; streams found
    /// are added, and a stream whose key is deleted is dropped. Keys of other types are skipped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry};
    ///
    /// let spec = MultiStreamSpec::pattern("tenant:*:events", "billing", "billing-1")
    ///     .discovery_interval(Duration::from_secs(5))
    ///     .handler(|_batch: Batch<RawEntry>| async { HandlerResult::Ok });
    /// assert_eq!(spec.key_pattern(), Some("tenant:*:events"));
    /// assert!(spec.streams().is_empty());
    /// ```
    pub fn pattern(
        pattern: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        MultiStreamSpec::with_streams(
            Streams::Pattern(pattern.into()),
            group.into(),
            consumer.into(),
        )
    }

    fn with_streams(streams: Streams, group: String, consumer: String) -> Self {
        MultiStreamSpec {
            streams,
            discovery_interval: None,
            group: Arc::from(group),
            consumer: Arc::from(consumer),
            options: ConsumerOptions::default(),
            runner: None,
        }
    }

    /// Sets the handler every stream shares. Its message type `M` is what every entry is decoded
    /// into, as for [`ConsumerSpec::handler`]; each batch comes from one stream, named in
    /// [`BatchMeta::stream`](crate::BatchMeta::stream).
    pub fn handler<M: Decode, H: Handler<M>>(mut self, handler: H) -> Self {
        self.runner = Some(Arc::new(TypedRunner::new(handler)));
        self
    }

    /// This spec with the handler of `other` (for specs made from `Settings`).
    pub(crate) fn with_handler_of(mut self, other: &MultiStreamSpec) -> Self {
        self.runner = other.runner.clone();
        self
    }

    /// Replaces all options at once (for example from a config file). They apply to every stream.
    pub fn with_options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    crate::spec::option_setters!();

    /// How often a [`pattern`](Self::pattern) is matched against the keys. Default 10s. Only for a
    /// pattern: [`validate`](Self::validate) refuses it on named streams.
    pub fn discovery_interval(mut self, every: Duration) -> Self {
        self.discovery_interval = Some(every);
        self
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The consumer name, the same in every stream's group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The options every stream's consumer runs with.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// The streams named in [`new`](Self::new), in order (empty for a pattern).
    pub fn streams(&self) -> &[String] {
        match &self.streams {
            Streams::Named(streams) => streams,
            Streams::Pattern(_) => &[],
        }
    }

    /// The key pattern of a spec made by [`pattern`](Self::pattern).
    pub fn key_pattern(&self) -> Option<&str> {
        match &self.streams {
            Streams::Pattern(pattern) => Some(pattern),
            Streams::Named(_) => None,
        }
    }

    /// How often the pattern is matched: the [`discovery_interval`](Self::discovery_interval) set, or
    /// 10s. `None` for named streams.
    #[allow(dead_code, reason = "read by pattern discovery")]
    pub(crate) fn discovery_every(&self) -> Option<Duration> {
        match &self.streams {
            Streams::Pattern(_) => Some(
                self.discovery_interval
                    .unwrap_or(DEFAULT_DISCOVERY_INTERVAL),
            ),
            Streams::Named(_) => None,
        }
    }

    /// The consumer the supervisor runs for `stream`: this spec's group, consumer name, options and
    /// handler, reading through the read the (group, consumer) shares.
    ///
    /// ```
    /// let spec = millrace::MultiStreamSpec::new(["a", "b"], "g", "c")
    ///     .dead_letter_stream("dead:{stream}".to_owned());
    /// let b = spec.for_stream("b");
    /// assert_eq!(b.id(), &millrace::ConsumerId::new("b", "g", "c"));
    /// assert_eq!(b.dead_letter_stream_name(), "dead:b");
    /// ```
    pub fn for_stream(&self, stream: &str) -> ConsumerSpec {
        ConsumerSpec {
            id: ConsumerId::new(stream, self.group.to_string(), self.consumer.to_string()),
            options: self.options.clone(),
            runner: self.runner.clone(),
            membership: match self.streams {
                Streams::Named(_) => Membership::NamedSet,
                Streams::Pattern(_) => Membership::Pattern,
            },
        }
    }

    /// The least-privilege Redis ACL rules this multi-stream consumer needs, for
    /// `ACL SETUSER <user> on >password <rules>`: its streams and their dead-letter streams (for a
    /// pattern, the pattern and its dead-letter pattern) and every command of
    /// [`ConsumerSpec::acl_rules`], plus `+type` (tells a deleted stream from a lost group),
    /// for a pattern `+scan` (discovery), and with `delete_acked` `+xackdel`. On a Redis Cluster add `+cluster|slots +cluster|shards`.
    ///
    /// ```
    /// let named = millrace::MultiStreamSpec::new(["a", "b"], "g", "c");
    /// assert!(named.acl_rules().starts_with("~a ~a:dlq ~b ~b:dlq resetchannels -@all +xreadgroup"));
    /// let found = millrace::MultiStreamSpec::pattern("tenant:*:events", "g", "c");
    /// let rules = found.acl_rules();
    /// assert!(rules.starts_with("~tenant:*:events ~tenant:*:events:dlq resetchannels"));
    /// assert!(rules.ends_with("+type +scan"));
    /// ```
    pub fn acl_rules(&self) -> String {
        let (names, extra): (Vec<&str>, &str) = match &self.streams {
            Streams::Named(streams) => (streams.iter().map(String::as_str).collect(), " +type"),
            Streams::Pattern(pattern) => (vec![pattern.as_str()], " +type +scan"),
        };
        let keys: Vec<String> = names
            .into_iter()
            .flat_map(|name| [name.to_owned(), self.dead_letter_stream_of(name)])
            .collect();
        if self.options.delete_acked {
            crate::spec::acl_line(&keys, &format!("{extra} +xackdel"))
        } else {
            crate::spec::acl_line(&keys, extra)
        }
    }

    /// The dead-letter stream `stream`'s consumer moves poison to.
    pub(crate) fn dead_letter_stream_of(&self, stream: &str) -> String {
        dead_letter_stream_of(stream, self.options.dead_letter_stream.as_deref())
    }

    /// The id of `stream`'s consumer, for errors.
    fn id_of(&self, stream: &str) -> ConsumerId {
        ConsumerId::new(stream, self.group.to_string(), self.consumer.to_string())
    }
}
