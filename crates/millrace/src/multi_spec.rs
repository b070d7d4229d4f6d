//! What to run over many streams: one (group, consumer) pair, its streams (named, or found by a
//! key pattern), and the options and handler every stream's consumer shares.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConsumerOptions, OnGroupLost, StartId};
use crate::decode::Decode;
use crate::error::{Error, Result};
use crate::handler::{BatchRunner, Handler, TypedRunner};
use crate::id::{control_char_reason, ConsumerId, Printable};
use crate::spec::{dead_letter_stream_of, ConsumerSpec, MAX_NAME_LEN, STREAM_PLACEHOLDER};

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
            shared_read: true,
            found_by_pattern: self.key_pattern().is_some(),
        }
    }

    /// The least-privilege Redis ACL rules this multi-stream consumer needs, for
    /// `ACL SETUSER <user> on >password <rules>`: its streams and their dead-letter streams (for a
    /// pattern, the pattern and its dead-letter pattern) and every command of
    /// [`ConsumerSpec::acl_rules`], plus `+type` (tells a deleted stream from a lost group) and,
    /// for a pattern, `+scan` (discovery). On a Redis Cluster add `+cluster|slots +cluster|shards`.
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
        crate::spec::acl_line(&keys, extra)
    }

    /// The dead-letter stream `stream`'s consumer moves poison to.
    pub(crate) fn dead_letter_stream_of(&self, stream: &str) -> String {
        dead_letter_stream_of(stream, self.options.dead_letter_stream.as_deref())
    }

    /// The id of `stream`'s consumer, for errors.
    fn id_of(&self, stream: &str) -> ConsumerId {
        ConsumerId::new(stream, self.group.to_string(), self.consumer.to_string())
    }

    /// Checks the streams, names, options and that a handler is set: refuses no streams, a stream
    /// named twice, an empty or over-long name, a fixed `dead_letter_stream` (it must hold
    /// `{stream}`), and a stream that is another one's dead-letter stream. The error names the
    /// group, the consumer and the stream, and says what to change.
    ///
    /// ```
    /// use millrace::{Batch, HandlerResult, MultiStreamSpec, RawEntry};
    /// let spec = MultiStreamSpec::new(["a", "b", "a"], "g", "c")
    ///     .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok });
    /// let err = spec.validate().unwrap_err().to_string();
    /// assert!(err.contains("stream `a`, group `g`, consumer `c`"), "{err}");
    /// assert!(err.contains("twice"), "{err}");
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.validate_names()?;
        self.validate_dead_letters()?;
        match &self.streams {
            Streams::Named(streams) => {
                for stream in streams {
                    self.for_stream(stream).validate()?;
                }
            }
            Streams::Pattern(pattern) => {
                self.validate_pattern(pattern)?;
                // Options and handler, checked on a stand-in stream.
                self.for_stream(pattern).validate()?;
            }
        }
        Ok(())
    }

    fn config_error(&self, stream: Option<&str>, field: &str, reason: String) -> Error {
        let scope = format!(
            "group `{}`, consumer `{}`",
            Printable(&self.group),
            Printable(&self.consumer)
        );
        match stream {
            Some(s) => Error::config(Some(&self.id_of(s)), field, reason),
            None => Error::config(None, field, format!("{reason} ({scope})")),
        }
    }

    fn validate_names(&self) -> Result<()> {
        for (field, value) in [("group", &self.group), ("consumer", &self.consumer)] {
            if value.is_empty() || value.len() > MAX_NAME_LEN {
                let what = format!(
                    "must be 1 to {MAX_NAME_LEN} bytes long; give the multi-stream consumer a {field} name"
                );
                return Err(self.config_error(None, field, what));
            }
            if let Some(reason) = control_char_reason(value) {
                return Err(self.config_error(None, field, reason));
            }
        }
        let Streams::Named(streams) = &self.streams else {
            return Ok(());
        };
        if self.discovery_interval.is_some() {
            let what = "applies to `MultiStreamSpec::pattern` only: streams named in `MultiStreamSpec::new` are not looked for; remove the call";
            return Err(self.config_error(None, "discovery_interval", what.to_owned()));
        }
        if streams.is_empty() {
            let what = "names no stream: name at least one (or use `MultiStreamSpec::pattern` to find them by key pattern)";
            return Err(self.config_error(None, "streams", what.to_owned()));
        }
        let mut seen = HashSet::with_capacity(streams.len());
        for (i, stream) in streams.iter().enumerate() {
            if stream.is_empty() || stream.len() > MAX_NAME_LEN {
                let what = format!(
                    "has a stream name of {} bytes at position {i}: each must be 1 to {MAX_NAME_LEN} bytes long",
                    stream.len()
                );
                return Err(self.config_error(None, "streams", what));
            }
            if let Some(reason) = control_char_reason(stream) {
                let what = format!("names a stream that {reason}");
                return Err(self.config_error(Some(stream), "streams", what));
            }
            if !seen.insert(stream.as_str()) {
                let what = "names this stream twice: each stream is read once per consumer; remove the repeat";
                return Err(self.config_error(Some(stream), "streams", what.to_owned()));
            }
        }
        Ok(())
    }

    fn validate_dead_letters(&self) -> Result<()> {
        if let Some(name) = &self.options.dead_letter_stream {
            if !name.contains(STREAM_PLACEHOLDER) {
                let what = format!(
                    "is the fixed name `{name}`: every stream of a multi-stream consumer keeps its own dead-letter stream, so it must contain `{STREAM_PLACEHOLDER}` (for example `{name}:{STREAM_PLACEHOLDER}`), or leave it unset for `<stream>:dlq`"
                );
                return Err(self.config_error(None, "dead_letter_stream", what));
            }
        }
        let streams = self.streams();
        let named: HashSet<&str> = streams.iter().map(String::as_str).collect();
        for stream in streams {
            let dlq = self.dead_letter_stream_of(stream);
            if named.contains(dlq.as_str()) {
                let what = format!(
                    "makes `{dlq}`, one of the consumed streams, this stream's dead-letter stream: its consumer would read the dead letters; drop `{dlq}` from the streams or set another `dead_letter_stream`"
                );
                return Err(self.config_error(Some(stream), "dead_letter_stream", what));
            }
        }
        Ok(())
    }

    fn validate_pattern(&self, pattern: &str) -> Result<()> {
        if pattern.is_empty() || pattern.len() > MAX_NAME_LEN {
            let what = format!("must be 1 to {MAX_NAME_LEN} bytes long (a `SCAN … MATCH` glob such as `tenant:*:events`)");
            return Err(self.config_error(None, "pattern", what));
        }
        if let Some(reason) = control_char_reason(pattern) {
            let what = format!("`{}` {reason}", Printable(pattern));
            return Err(self.config_error(None, "pattern", what));
        }
        if self
            .discovery_interval
            .is_some_and(|e| e < MIN_DISCOVERY_INTERVAL)
        {
            let what = "must be at least 10ms".to_owned();
            return Err(self.config_error(None, "discovery_interval", what));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, HandlerResult, RawEntry};

    fn spec(streams: &[&str]) -> MultiStreamSpec {
        MultiStreamSpec::new(streams.iter().copied(), "g", "c")
            .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok })
    }

    fn refused(spec: &MultiStreamSpec) -> String {
        spec.validate().expect_err("refused").to_string()
    }

    #[test]
    fn names_and_patterns_with_control_characters_are_refused() {
        let err = refused(&spec(&["a", "b\r\nc"]));
        assert!(
            err.contains("stream `b\\r\\nc`, group `g`, consumer `c`"),
            "{err}"
        );
        assert!(
            err.contains("`streams` names a stream that holds the control character `\\r`"),
            "{err}"
        );
        let err = refused(
            &MultiStreamSpec::new(["a"], "g\n", "c")
                .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok }),
        );
        assert!(
            err.contains("`group` holds the control character `\\n`"),
            "{err}"
        );
        assert!(err.contains("group `g\\n`, consumer `c`"), "{err}");
        let err = refused(
            &MultiStreamSpec::new(["a"], "g", "c\0")
                .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok }),
        );
        assert!(
            err.contains("`consumer` holds the control character `\\u{0}`"),
            "{err}"
        );
        let err = refused(
            &MultiStreamSpec::pattern("tenant:*\n", "g", "c")
                .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok }),
        );
        assert!(
            err.contains("`pattern` `tenant:*\\n` holds the control character"),
            "{err}"
        );
        assert!(err.contains("group `g`, consumer `c`"), "{err}");
        assert!(!err.contains(['\r', '\n', '\0']), "{err:?}");
    }

    #[test]
    fn zero_streams_are_refused_naming_the_group_and_consumer() {
        let err = refused(&spec(&[]));
        assert!(err.contains("`streams` names no stream"), "{err}");
        assert!(err.contains("group `g`, consumer `c`"), "{err}");
    }

    #[test]
    fn a_stream_named_twice_is_refused_naming_it() {
        let err = refused(&spec(&["a", "b", "b"]));
        assert!(err.contains("stream `b`, group `g`, consumer `c`"), "{err}");
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn empty_and_over_long_names_are_refused() {
        assert!(refused(&spec(&["a", ""])).contains("position 1"));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(refused(&spec(&["a", &long])).contains("1 to 4096 bytes"));
        let no_group = MultiStreamSpec::new(["a"], "", "c")
            .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok });
        assert!(refused(&no_group).contains("`group` must be 1 to"));
        let no_handler = MultiStreamSpec::new(["a"], "g", "c");
        assert!(refused(&no_handler).contains("`handler` is not set"));
    }

    #[test]
    fn each_stream_has_its_own_dead_letter_stream() {
        let s = spec(&["a", "b"]);
        assert_eq!(s.for_stream("a").dead_letter_stream_name(), "a:dlq");
        assert_eq!(s.for_stream("b").dead_letter_stream_name(), "b:dlq");
        let s = s.dead_letter_stream("{stream}:dead".to_owned());
        assert!(s.validate().is_ok());
        assert_eq!(s.for_stream("b").dead_letter_stream_name(), "b:dead");
    }

    #[test]
    fn a_fixed_dead_letter_stream_is_refused() {
        let err = refused(&spec(&["a", "b"]).dead_letter_stream("all:dlq".to_owned()));
        assert!(
            err.contains("`dead_letter_stream` is the fixed name `all:dlq`"),
            "{err}"
        );
        assert!(err.contains("{stream}"), "{err}");
    }

    #[test]
    fn a_stream_that_is_another_ones_dead_letter_stream_is_refused() {
        let err = refused(&spec(&["a", "a:dlq"]));
        assert!(err.contains("stream `a`, group `g`"), "{err}");
        assert!(
            err.contains("`a:dlq`, one of the consumed streams"),
            "{err}"
        );
    }

    #[test]
    fn the_options_apply_to_every_stream_and_its_consumer_reads_shared() {
        let s = spec(&["a", "b"])
            .count(7)
            .start_id(StartId::Beginning)
            .on_group_lost(OnGroupLost::Fail);
        let b = s.for_stream("b");
        assert!(b.shared_read);
        assert_eq!(b.options().count, Some(7));
        assert_eq!(b.options().start_id, StartId::Beginning);
        assert!(!crate::ConsumerSpec::new("b", "g", "c").shared_read);
    }

    #[test]
    fn a_pattern_starts_with_no_stream_and_keeps_its_interval() {
        let s = MultiStreamSpec::pattern("t:*", "g", "c")
            .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok });
        assert!(s.validate().is_ok());
        assert_eq!(s.discovery_every(), Some(DEFAULT_DISCOVERY_INTERVAL));
        let s = s.discovery_interval(Duration::from_secs(1));
        assert_eq!(s.discovery_every(), Some(Duration::from_secs(1)));
        let err = refused(&s.clone().discovery_interval(Duration::ZERO));
        assert!(
            err.contains("`discovery_interval` must be at least 10ms"),
            "{err}"
        );
        let empty = MultiStreamSpec::pattern("", "g", "c")
            .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok });
        assert!(refused(&empty).contains("`pattern` must be 1 to"));
    }

    #[test]
    fn a_discovery_interval_on_named_streams_is_refused() {
        let err = refused(&spec(&["a"]).discovery_interval(Duration::from_secs(1)));
        assert!(
            err.contains("`discovery_interval` applies to `MultiStreamSpec::pattern` only"),
            "{err}"
        );
    }
}
