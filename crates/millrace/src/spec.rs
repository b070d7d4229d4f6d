//! What to run: a consumer's identity, its options and its handler.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConsumerOptions, OnGroupLost, StartId};
use crate::decode::Decode;
use crate::error::{Error, Result};
use crate::handler::{BatchRunner, Handler, TypedRunner};
use crate::id::ConsumerId;

/// Longest stream, group or consumer name accepted, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 4096;

/// One consumer to supervise: its id, options and handler.
///
/// ```
/// use std::time::Duration;
/// use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry};
///
/// let spec = ConsumerSpec::new("orders", "processors", "proc-1")
///     .count(100)
///     .block(Duration::from_secs(2))
///     .handler(|batch: Batch<RawEntry>| async move {
///         println!("{} entries", batch.len());
///         HandlerResult::Ok
///     });
/// assert_eq!(&*spec.id().consumer, "proc-1");
/// ```
#[derive(Clone)]
pub struct ConsumerSpec {
    pub(crate) id: ConsumerId,
    pub(crate) options: ConsumerOptions,
    pub(crate) runner: Option<Arc<dyn BatchRunner>>,
    /// What the consumer is part of: a consumer of its own stream, or one stream of a
    /// multi-stream consumer ([`MultiStreamSpec::for_stream`]).
    ///
    /// [`MultiStreamSpec::for_stream`]: crate::MultiStreamSpec::for_stream
    pub(crate) membership: Membership,
}

/// What a stream's consumer is part of, the one place this is said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    /// A consumer of its own stream ([`ConsumerSpec::new`]): its own read.
    OwnStream,
    /// One stream of a multi-stream consumer over named streams
    /// ([`MultiStreamSpec::new`](crate::MultiStreamSpec::new)): it reads through the read its
    /// (group, consumer) shares, spreads its timers over the set's streams, and is dropped when
    /// its stream's key is deleted.
    NamedSet,
    /// One stream of a multi-stream consumer that finds its streams by key pattern
    /// ([`MultiStreamSpec::pattern`](crate::MultiStreamSpec::pattern)): as
    /// [`NamedSet`](Self::NamedSet), and its group is created on an existing key only (no
    /// `MKSTREAM`), so a key deleted after the sweep that found it is dropped, not made again.
    Pattern,
}

impl Membership {
    /// A stream of a multi-stream consumer (named or by pattern): it shares a read.
    pub(crate) fn in_set(self) -> bool {
        self != Membership::OwnStream
    }
}

impl fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("id", &self.id)
            .field("options", &self.options)
            .field("handler", &self.runner.as_ref().map(|r| r.type_name()))
            .field("membership", &self.membership)
            .finish()
    }
}

/// Where `{stream}` stands for the stream's name in [`ConsumerOptions::dead_letter_stream`].
pub(crate) const STREAM_PLACEHOLDER: &str = "{stream}";

/// The dead-letter stream of `stream` under the setting `configured`.
pub(crate) fn dead_letter_stream_of(stream: &str, configured: Option<&str>) -> String {
    match configured {
        Some(name) => name.replace(STREAM_PLACEHOLDER, stream),
        None => format!("{stream}:dlq"),
    }
}

/// The commands every consumer runs (see [`ConsumerSpec::acl_rules`]).
const CONSUMER_COMMANDS: &str = "+xreadgroup +xack +xautoclaim +xclaim +xpending +xgroup|create +xadd +xrange +evalsha +eval +xinfo|groups +client|id +client|unblock";

/// One `ACL SETUSER` rule line: the key patterns, the consumer's commands and `extra` ones.
pub(crate) fn acl_line(keys: &[String], extra: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("~{k}")).collect();
    format!(
        "{} resetchannels -@all {CONSUMER_COMMANDS}{extra}",
        keys.join(" ")
    )
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => $field:ident $(($wrap:path))?;)*) => {
        $($(#[$doc])* pub fn $name(mut self, value: $ty) -> Self {
            self.options.$field = $($wrap)?(value);
            self
        })*
    };
}

/// The option setters of [`ConsumerSpec`], shared with [`MultiStreamSpec`](crate::MultiStreamSpec)
/// (both keep their options in a field named `options`).
macro_rules! option_setters {
    () => {
        $crate::spec::setters! {
            /// A fixed number of entries per read, instead of the adaptive read size. See
            /// [`ConsumerOptions::count`].
            count: usize => count(Some);
            /// How long a batch should take the handler (adaptive read size). See
            /// [`ConsumerOptions::batch_target`].
            batch_target: Duration => batch_target;
            /// The smallest adaptive read size. See [`ConsumerOptions::min_count`].
            min_count: usize => min_count;
            /// The largest adaptive read size. See [`ConsumerOptions::max_count`].
            max_count: usize => max_count;
            /// How long a read blocks. See [`ConsumerOptions::block`].
            block: Duration => block;
            /// Read connection response timeout. See [`ConsumerOptions::read_timeout`].
            read_timeout: Duration => read_timeout(Some);
            /// How often to claim idle entries. See [`ConsumerOptions::claim_interval`].
            claim_interval: Duration => claim_interval;
            /// Idle time before an entry is claimed. See [`ConsumerOptions::claim_min_idle`].
            claim_min_idle: Duration => claim_min_idle;
            /// Entries per XAUTOCLAIM call. See [`ConsumerOptions::claim_count`].
            claim_count: usize => claim_count;
            /// XAUTOCLAIM calls per claim tick. See [`ConsumerOptions::claim_calls_per_tick`].
            claim_calls_per_tick: usize => claim_calls_per_tick;
            /// Longest reconnect backoff. See [`ConsumerOptions::reconnect_backoff_max`].
            reconnect_backoff_max: Duration => reconnect_backoff_max;
            /// Opt-in reaper of idle, empty consumers. See [`ConsumerOptions::reap_idle_consumers_after`].
            reap_idle_consumers_after: Duration => reap_idle_consumers_after(Some);
            /// Backoff for failed entries. See [`ConsumerOptions::retry_backoff`].
            retry_backoff: crate::RetryBackoff => retry_backoff(Some);
            /// Sub-batches handled at once, by key. See [`ConsumerOptions::key_concurrency`].
            key_concurrency: usize => key_concurrency(Some);
            /// The field holding an entry's key. See [`ConsumerOptions::key_field`].
            key_field: String => key_field(Some);
            /// A function giving an entry's key. See [`ConsumerOptions::key_by`].
            key_by: crate::KeyFn => key_by(Some);
            /// Per-entry trace spans. See [`ConsumerOptions::trace_entries`].
            trace_entries: bool => trace_entries;
            /// Delete entries once every group acknowledged them (Redis 8.2+). See
            /// [`ConsumerOptions::delete_acked`].
            delete_acked: bool => delete_acked;
            /// Where a new group starts. See [`ConsumerOptions::start_id`].
            start_id: StartId => start_id;
            /// Whether to create a missing group. See [`ConsumerOptions::create_group`].
            create_group: bool => create_group;
            /// What to do when the group vanishes. See [`ConsumerOptions::on_group_lost`].
            on_group_lost: OnGroupLost => on_group_lost;
            /// Deliveries before dead-lettering. See [`ConsumerOptions::max_deliveries`].
            max_deliveries: u64 => max_deliveries;
            /// The dead-letter stream. See [`ConsumerOptions::dead_letter_stream`].
            dead_letter_stream: String => dead_letter_stream(Some);
            /// Per-batch handler timeout. See [`ConsumerOptions::handler_timeout`].
            handler_timeout: Duration => handler_timeout(Some);
            /// Gauge refresh interval. See [`ConsumerOptions::gauge_interval`].
            gauge_interval: Duration => gauge_interval;
            /// Graceful stop deadline. See [`ConsumerOptions::shutdown_timeout`].
            shutdown_timeout: Duration => shutdown_timeout;
        }
    };
}
pub(crate) use option_setters;
pub(crate) use setters;

impl ConsumerSpec {
    /// A consumer of `stream` in `group`, named `consumer`, with default options and no handler yet.
    pub fn new(
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        ConsumerSpec {
            id: ConsumerId::new(stream, group, consumer),
            options: ConsumerOptions::default(),
            runner: None,
            membership: Membership::OwnStream,
        }
    }

    /// Sets the handler. Its message type `M` is what every entry is decoded into: a
    /// `serde::Deserialize` type, or [`RawEntry`](crate::RawEntry) for the raw field pairs.
    pub fn handler<M: Decode, H: Handler<M>>(mut self, handler: H) -> Self {
        self.runner = Some(Arc::new(TypedRunner::new(handler)));
        self
    }

    /// Replaces all options at once (for example from a config file).
    pub fn with_options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    option_setters!();

    /// The same spec for another group and consumer name on the same stream.
    pub fn with_id(mut self, group: impl Into<String>, consumer: impl Into<String>) -> Self {
        self.id = ConsumerId::new(self.id.stream.to_string(), group, consumer);
        self
    }

    /// `n` copies of this spec named `{consumer}-0` … `{consumer}-{n-1}`, sharing one handler: a pool
    /// of consumers on one stream in one line. Names are stable across restarts.
    ///
    /// ```
    /// use millrace::{Batch, ConsumerSpec, HandlerResult, RawEntry};
    /// let pool = ConsumerSpec::new("orders", "processors", "billing")
    ///     .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok })
    ///     .replicas(3);
    /// let names: Vec<_> = pool.iter().map(|s| s.id().consumer.to_string()).collect();
    /// assert_eq!(names, ["billing-0", "billing-1", "billing-2"]);
    /// ```
    pub fn replicas(self, n: usize) -> Vec<ConsumerSpec> {
        if n == 1 {
            return vec![self];
        }
        (0..n)
            .map(|i| {
                let name = format!("{}-{i}", self.id.consumer);
                let group = self.id.group.to_string();
                self.clone().with_id(group, name)
            })
            .collect()
    }

    /// The consumer's id.
    pub fn id(&self) -> &ConsumerId {
        &self.id
    }

    /// The consumer's options.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// The dead-letter stream in effect: [`ConsumerOptions::dead_letter_stream`] with every
    /// `{stream}` replaced by the stream's name, or `<stream>:dlq` when unset.
    ///
    /// ```
    /// use millrace::ConsumerSpec;
    /// let spec = ConsumerSpec::new("tenant:7", "g", "c");
    /// assert_eq!(spec.dead_letter_stream_name(), "tenant:7:dlq");
    /// let spec = spec.dead_letter_stream("dead:{stream}".to_owned());
    /// assert_eq!(spec.dead_letter_stream_name(), "dead:tenant:7");
    /// ```
    pub fn dead_letter_stream_name(&self) -> String {
        dead_letter_stream_of(&self.id.stream, self.options.dead_letter_stream.as_deref())
    }

    /// The least-privilege Redis ACL rules this consumer needs, for `ACL SETUSER <user> on >password <rules>`.
    /// `+client|id +client|unblock` are optional (they make a stop instant); `+xinfo|groups` is
    /// optional (the lag gauge); a stream of a multi-stream consumer adds `+type`, optional (it tells
    /// a deleted stream from a lost group at once); everything else is required.
    ///
    /// ```
    /// let spec = millrace::ConsumerSpec::new("orders", "g", "c");
    /// assert!(spec.acl_rules().starts_with("~orders ~orders:dlq resetchannels -@all +xreadgroup"));
    /// ```
    pub fn acl_rules(&self) -> String {
        let keys = [self.id.stream.to_string(), self.dead_letter_stream_name()];
        let extra = match self.membership {
            Membership::Pattern => " +type +scan",
            Membership::NamedSet => " +type",
            Membership::OwnStream => "",
        };
        let extra = if self.options.delete_acked {
            format!("{extra} +xackdel")
        } else {
            extra.to_owned()
        };
        acl_line(&keys, &extra)
    }

    /// Checks names, options and that a handler is set.
    pub fn validate(&self) -> Result<()> {
        let id = &self.id;
        for (field, value) in [
            ("stream", &id.stream),
            ("group", &id.group),
            ("consumer", &id.consumer),
        ] {
            if value.is_empty() {
                return Err(Error::config(Some(id), field, "must not be empty"));
            }
            if value.len() > MAX_NAME_LEN {
                return Err(Error::config(
                    Some(id),
                    field,
                    format!("must be at most {MAX_NAME_LEN} bytes"),
                ));
            }
            if let Some(reason) = crate::id::control_char_reason(value) {
                return Err(Error::config(Some(id), field, reason));
            }
        }
        self.options.validate(Some(id))?;
        if self.dead_letter_stream_name() == *id.stream {
            return Err(Error::config(
                Some(id),
                "dead_letter_stream",
                "must differ from the consumed stream",
            ));
        }
        if self.runner.is_none() {
            return Err(Error::config(
                Some(id),
                "handler",
                "is not set: call `.handler(...)` on the ConsumerSpec",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, HandlerResult, RawEntry};

    #[test]
    fn names_with_control_characters_are_refused_naming_the_consumer() {
        let spec = |stream: &str, group: &str, consumer: &str| {
            ConsumerSpec::new(stream, group, consumer)
                .handler(|_b: Batch<RawEntry>| async { HandlerResult::Ok })
        };
        assert!(spec("orders", "g", "c").validate().is_ok());
        for (s, g, c, field, shown) in [
            (
                "orders\r\n",
                "g",
                "c",
                "`stream`",
                "stream `orders\\r\\n`, group `g`, consumer `c`",
            ),
            (
                "orders",
                "g\n",
                "c",
                "`group`",
                "stream `orders`, group `g\\n`, consumer `c`",
            ),
            (
                "orders",
                "g",
                "c\0",
                "`consumer`",
                "stream `orders`, group `g`, consumer `c\\u{0}`",
            ),
            ("or\x1bders", "g", "c", "`stream`", "stream `or\\u{1b}ders`"),
        ] {
            let err = spec(s, g, c).validate().expect_err("refused").to_string();
            assert!(err.contains(shown), "{err}");
            assert!(
                err.contains(&format!("{field} holds the control character")),
                "{err}"
            );
            assert!(
                err.contains("use a name without control characters"),
                "{err}"
            );
            assert!(!err.contains(['\r', '\n', '\0', '\x1b']), "{err:?}");
        }
    }
}
