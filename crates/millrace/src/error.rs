//! The crate's one error type, and how Redis errors are classified (retry, group lost, fatal).

use std::sync::Arc;
use std::time::Duration;

use crate::id::ConsumerId;

/// `Result` with millrace's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in millrace. Every variant that concerns a consumer names its
/// stream, group and consumer; none ever contains a password.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid. `field` names the setting (as in `millrace.toml`).
    #[error("invalid configuration{}: `{field}` {reason}", scope_suffix(.consumer))]
    Config {
        /// The consumer whose configuration is wrong, if it is a consumer setting.
        consumer: Option<ConsumerId>,
        /// The setting's name.
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The Redis URL could not be parsed. The URL itself is not repeated, since it may hold a password.
    #[error("invalid Redis URL (not shown, it may contain credentials): {reason}")]
    InvalidUrl {
        /// What is wrong.
        reason: String,
    },
    /// A Redis command failed with an error that may go away by itself (timeout, lost connection,
    /// server loading or out of memory). millrace retries these with backoff.
    #[error("{}{command} failed: {source}", scope_prefix(.consumer))]
    Transient {
        /// The consumer the command ran for.
        consumer: Option<ConsumerId>,
        /// The Redis command.
        command: &'static str,
        /// The error from redis-rs.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis command failed in a way that retrying cannot fix: missing ACL permission (NOPERM),
    /// a key of the wrong type (WRONGTYPE), bad credentials, a read-only replica.
    #[error("{}{command} failed: {reason}. What to do: {hint}", scope_prefix(.consumer))]
    Fatal {
        /// The consumer the command ran for.
        consumer: Option<ConsumerId>,
        /// The Redis command.
        command: &'static str,
        /// The server's answer.
        reason: String,
        /// What to change.
        hint: String,
    },
    /// The consumer group or the stream key disappeared (NOGROUP, `UNBLOCKED the stream key no longer exists`).
    #[error(
        "{consumer}: the consumer group or the stream key vanished during {command}: {detail}"
    )]
    GroupLost {
        /// The consumer that noticed.
        consumer: ConsumerId,
        /// The Redis command.
        command: &'static str,
        /// The server's message.
        detail: String,
    },
    /// The handler panicked; its batch was not acknowledged and will be handled again.
    #[error("{consumer}: handler panicked: {message}")]
    HandlerPanicked {
        /// The consumer whose handler panicked.
        consumer: ConsumerId,
        /// The panic message.
        message: String,
    },
    /// The consume loop itself panicked (a bug in millrace; please report it). The consumer is restarted.
    #[error("{consumer}: consume loop panicked (a millrace bug): {message}")]
    Internal {
        /// The consumer.
        consumer: ConsumerId,
        /// The panic message.
        message: String,
    },
    /// A consumer with the same stream, group and consumer name already runs in this process.
    #[error("{consumer} is already running in this process: two live consumers with one name share one pending list and duplicate each other's work; give each a unique consumer name")]
    DuplicateConsumer {
        /// The refused consumer.
        consumer: ConsumerId,
    },
    /// No consumer with this id is supervised.
    #[error("{consumer} is not supervised here")]
    UnknownConsumer {
        /// The id asked for.
        consumer: ConsumerId,
    },
    /// A consumer kept failing and the supervisor gave up on it (escalation).
    #[error("{consumer}: gave up after {restarts} restarts within {}; last failure: {}", humantime::format_duration(*.window), .last_error.unscoped())]
    RestartLimit {
        /// The consumer that kept failing.
        consumer: ConsumerId,
        /// Restarts counted in the window.
        restarts: usize,
        /// The restart window.
        window: Duration,
        /// The last failure, as the consumer reported it.
        #[source]
        last_error: Arc<Error>,
    },
    /// A consumer failed with an error that restarting cannot fix, and the supervisor gave up at once.
    #[error("{consumer}: stopped for good: {}", .cause.unscoped())]
    ConsumerFailed {
        /// The consumer.
        consumer: ConsumerId,
        /// The failure, as the consumer reported it: [`Error::is_fatal`] and [`Error::consumer`]
        /// of the escalation answer from it.
        #[source]
        cause: Arc<Error>,
    },
    /// A [`Producer`](crate::producer::Producer) could not add to a stream: the message cannot be
    /// encoded, or Redis refused or did not answer. [`Error::is_retryable`] tells which.
    #[error("adding to stream `{stream}` failed: {reason}. What to do: {hint}")]
    Produce {
        /// The stream.
        stream: String,
        /// What went wrong, and how much of a pipeline was added.
        reason: String,
        /// What to do.
        hint: String,
        /// Whether trying again may succeed.
        retryable: bool,
    },
    /// The supervisor actor is not running (it stopped or failed).
    #[error("the millrace supervisor is not running: {0}")]
    Supervisor(String),
}

fn scope_suffix(consumer: &Option<ConsumerId>) -> String {
    consumer
        .as_ref()
        .map(|c| format!(" for {c}"))
        .unwrap_or_default()
}

fn scope_prefix(consumer: &Option<ConsumerId>) -> String {
    consumer
        .as_ref()
        .map(|c| format!("{c}: "))
        .unwrap_or_default()
}

/// How an error should be treated by the consumer loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Retry after a backoff; replay the own PEL if it was a read.
    Transient,
    /// Group or key gone: recreate by policy.
    GroupLost,
    /// Do not retry.
    Fatal,
}

impl Error {
    /// True when waiting and trying again may succeed (timeouts, lost connections, LOADING, OOM).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Transient { .. }
                | Error::Produce {
                    retryable: true,
                    ..
                }
        )
    }

    /// True when only a change of configuration, permissions or data can fix this. An escalation
    /// ([`Error::ConsumerFailed`]) answers for the error that caused it.
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::ConsumerFailed { cause, .. } => cause.is_fatal(),
            _ => matches!(
                self,
                Error::Fatal { .. }
                    | Error::Config { .. }
                    | Error::InvalidUrl { .. }
                    | Error::DuplicateConsumer { .. }
                    | Error::Produce {
                        retryable: false,
                        ..
                    }
            ),
        }
    }

    /// True when the server refused the credentials (a wrong password, an unknown or disabled ACL
    /// user), also when this is an escalation caused by that.
    pub fn is_authentication_failure(&self) -> bool {
        match self {
            Error::Fatal { command, .. } => *command == "AUTH",
            Error::ConsumerFailed { cause, .. } => cause.is_authentication_failure(),
            Error::RestartLimit { last_error, .. } => last_error.is_authentication_failure(),
            _ => false,
        }
    }

    /// The message without the leading consumer, for an error nested in one that names it.
    fn unscoped(&self) -> String {
        let text = self.to_string();
        match self.consumer() {
            Some(c) => text
                .strip_prefix(&format!("{c}: "))
                .map(str::to_owned)
                .unwrap_or(text),
            None => text,
        }
    }

    /// The consumer this error concerns, when it concerns one.
    pub fn consumer(&self) -> Option<&ConsumerId> {
        match self {
            Error::Config { consumer, .. }
            | Error::Transient { consumer, .. }
            | Error::Fatal { consumer, .. } => consumer.as_ref(),
            Error::GroupLost { consumer, .. }
            | Error::HandlerPanicked { consumer, .. }
            | Error::Internal { consumer, .. }
            | Error::DuplicateConsumer { consumer }
            | Error::UnknownConsumer { consumer }
            | Error::RestartLimit { consumer, .. }
            | Error::ConsumerFailed { consumer, .. } => Some(consumer),
            Error::InvalidUrl { .. } | Error::Supervisor(_) | Error::Produce { .. } => None,
        }
    }

    /// Whether, on a Redis Cluster, this error says that the stream's owner changed (a failover's
    /// `UNBLOCKED … instance state changed`, a migration's `UNBLOCKED the stream key no longer
    /// exists`, `READONLY` from a demoted master) or that a shard has no master for now
    /// (`MASTERDOWN`). On one server the first two mean the group is lost and the others are
    /// fatal; on a cluster the consumer looks its stream's owner up again instead.
    /// (`MOVED`, `ASK`, `CLUSTERDOWN`, `TRYAGAIN` and lost connections are transient anywhere.)
    pub(crate) fn is_topology_change(&self) -> bool {
        let text = match self {
            Error::GroupLost { detail, .. } => detail,
            Error::Fatal { reason, .. } => reason,
            _ => return false,
        };
        [
            "instance state changed",
            "no longer exists",
            "READONLY",
            "read only replica",
            "MASTERDOWN",
        ]
        .iter()
        .any(|words| text.contains(words))
    }

    pub(crate) fn class(&self) -> Class {
        match self {
            Error::Transient { .. } => Class::Transient,
            Error::GroupLost { .. } => Class::GroupLost,
            _ => Class::Fatal,
        }
    }

    pub(crate) fn config(
        consumer: Option<&ConsumerId>,
        field: &str,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            consumer: consumer.cloned(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// Wraps a redis-rs error, classifying it and naming the consumer, key and command.
    pub(crate) fn from_redis(
        consumer: &ConsumerId,
        command: &'static str,
        key: &str,
        err: redis::RedisError,
    ) -> Self {
        classify(Some(consumer), command, key, err)
    }
}

/// Maps a redis-rs error to millrace's classes, with a hint for the non-retryable ones.
pub(crate) fn classify(
    consumer: Option<&ConsumerId>,
    command: &'static str,
    key: &str,
    err: redis::RedisError,
) -> Error {
    use redis::{ErrorKind, ServerErrorKind};
    let code = err.code().map(str::to_owned);
    let fatal = |hint: String| Error::Fatal {
        consumer: consumer.cloned(),
        command,
        reason: redact(&err.to_string()),
        hint,
    };
    if err.is_timeout()
        || err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return Error::Transient {
            consumer: consumer.cloned(),
            command,
            source: err,
        };
    }
    let authentication = |server: String| Error::Fatal {
        consumer: consumer.cloned(),
        command: "AUTH",
        reason: format!("authentication failed: the server refused the credentials ({server})"),
        hint: "check the username and password in the Redis URL, and that the ACL user is `on`"
            .into(),
    };
    match err.kind() {
        ErrorKind::AuthenticationFailed => return authentication(redact(&err.to_string())),
        ErrorKind::InvalidClientConfig => return fatal("fix the Redis connection settings".into()),
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return fatal(noperm_hint(&err.to_string(), command, key))
        }
        ErrorKind::Server(ServerErrorKind::ReadOnly) => {
            return fatal("the server is a read-only replica; point millrace at the primary".into())
        }
        _ => {}
    }
    match code.as_deref() {
        Some("NOGROUP") | Some("UNBLOCKED") if !err.to_string().contains("client unblocked") => {
            if let Some(consumer) = consumer {
                return Error::GroupLost { consumer: consumer.clone(), command, detail: err.to_string() };
            }
            fatal(format!("create the consumer group first: `XGROUP CREATE {key} <group> $ MKSTREAM`"))
        }
        Some("WRONGTYPE") => fatal(format!(
            "key `{key}` holds a value that is not a stream: delete or rename it, or consume another key"
        )),
        Some("NOAUTH") | Some("WRONGPASS") => authentication(redact(&err.to_string())),
        Some("NOPERM") => fatal(noperm_hint(&err.to_string(), command, key)),
        Some("READONLY") => fatal("the server is a read-only replica; point millrace at the primary".into()),
        Some("ERR") if err.to_string().contains("unknown command") => {
            fatal("millrace needs Redis 7.0 or newer".into())
        }
        Some("CROSSSLOT") => fatal(format!(
            "keys used together must share a hash tag in a cluster, e.g. `{{{key}}}` and `{{{key}}}:dlq`"
        )),
        _ => Error::Transient { consumer: consumer.cloned(), command, source: err },
    }
}

/// What to grant for a NOPERM: the command or key the server named, else the command we ran.
fn noperm_hint(message: &str, command: &str, key: &str) -> String {
    let rule = if let Some(rest) = message.split("run the '").nth(1) {
        format!("+{}", rest.split('\'').next().unwrap_or_default())
    } else if message.contains("access one of the keys") || message.contains("dead-letter stream") {
        format!("~{key}")
    } else if let Some(rest) = message.split("permissions to run ").nth(1) {
        format!(
            "+{}",
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        )
    } else {
        format!(
            "+{}",
            command
                .split_whitespace()
                .next()
                .unwrap_or(command)
                .to_ascii_lowercase()
        )
    };
    format!(
        "the Redis ACL user lacks a permission needed for {command} on key `{key}`: grant it with `ACL SETUSER <user> {rule}` (`ConsumerSpec::acl_rules()` gives the full least-privilege ACL line)"
    )
}

/// Removes anything that looks like `user:password@` from a message, in case a URL leaked into it.
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for word in message.split_inclusive(char::is_whitespace) {
        match (word.find("://"), word.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                out.push_str(&word[..scheme + 3]);
                out.push_str("<redacted>");
                out.push_str(&word[at..]);
            }
            _ => out.push_str(word),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_lost(detail: &str) -> Error {
        Error::GroupLost {
            consumer: ConsumerId::new("s", "g", "c"),
            command: "XREADGROUP",
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn owner_changes_are_told_from_a_lost_group() {
        for topology in [
            group_lost("\"UNBLOCKED\": force unblock from blocking operation, instance state changed (master -> replica?)"),
            group_lost("\"UNBLOCKED\": the stream key no longer exists"),
        ] {
            assert!(topology.is_topology_change(), "{topology}");
        }
        let nogroup = group_lost(
            "NOGROUP No such key 's' or consumer group 'g' in XREADGROUP with GROUP option",
        );
        assert!(!nogroup.is_topology_change());
        let noperm = Error::Fatal {
            consumer: None,
            command: "XACK",
            reason: "NOPERM this user has no permissions".into(),
            hint: String::new(),
        };
        assert!(!noperm.is_topology_change());
    }

    #[test]
    fn redact_hides_userinfo() {
        assert_eq!(
            redact("cannot reach redis://u:secret@h:1/0 now"),
            "cannot reach redis://<redacted>@h:1/0 now"
        );
        assert_eq!(redact("plain"), "plain");
    }
}
