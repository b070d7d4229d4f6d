//! The crate's one error type, and how Redis errors are classified (retry, group lost, fatal).

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Action;
use crate::id::ConsumerId;
pub(crate) use crate::redact::redact;

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
        /// The server's error reply, when the error came from one (never a connection error,
        /// whose text could hold a URL).
        #[source]
        source: Option<Arc<redis::RedisError>>,
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
        /// The server's error reply, when the error came from one.
        #[source]
        source: Option<Arc<redis::RedisError>>,
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

    /// The server's error reply this error came from, if any.
    pub(crate) fn redis_source(&self) -> Option<&redis::RedisError> {
        match self {
            Error::Transient { source, .. } => Some(source),
            Error::GroupLost { source, .. } | Error::Fatal { source, .. } => source.as_deref(),
            _ => None,
        }
    }

    /// What a consumer on a Redis Cluster does about this error ([`Action::for_error`] of the
    /// server's reply): a failover's `UNBLOCKED … instance state changed`, a migration's
    /// `UNBLOCKED the stream key no longer exists` and `READONLY` from a demoted master say the
    /// stream's owner changed; on one server the first two mean the group is lost and `READONLY`
    /// is fatal. `None` when the error is not about the cluster.
    pub(crate) fn cluster_action(&self) -> Option<Action> {
        self.redis_source().and_then(Action::for_error)
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
    // Only a server's reply is kept as the source: it never holds a URL.
    let reply = err.code().is_some().then(|| Arc::new(err.clone()));
    let fatal = |hint: String| Error::Fatal {
        consumer: consumer.cloned(),
        command,
        reason: redact(&err.to_string()),
        hint,
        source: reply.clone(),
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
        source: None,
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
                return Error::GroupLost { consumer: consumer.clone(), command, detail: err.to_string(), source: reply };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The error redis-rs makes of a server's error reply line (`-CODE detail`).
    fn reply(line: &str) -> redis::RedisError {
        redis::parse_redis_value(format!("{line}\r\n").as_bytes())
            .expect("a reply")
            .extract_error()
            .expect_err("an error reply")
    }

    fn classified(line: &str) -> Error {
        let consumer = ConsumerId::new("s", "g", "c");
        classify(Some(&consumer), "XREADGROUP", "s", reply(line))
    }

    #[test]
    fn owner_changes_are_told_from_a_lost_group() {
        // On one server the class rules: a failover's and a migration's UNBLOCKED read as a lost
        // group, READONLY as fatal. On a cluster the action says the owner changed.
        for (line, class) in [
            (
                "-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
                Class::GroupLost,
            ),
            ("-UNBLOCKED the stream key no longer exists", Class::GroupLost),
            ("-READONLY You can't write against a read only replica.", Class::Fatal),
        ] {
            let err = classified(line);
            assert_eq!(err.class(), class, "{err}");
            assert_eq!(err.cluster_action(), Some(Action::FollowOwner), "{err}");
        }
        for line in [
            "-MOVED 3999 127.0.0.1:6381",
            "-CLUSTERDOWN The cluster is down",
            "-TRYAGAIN Multiple keys request during rehashing of slot",
            "-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        ] {
            let err = classified(line);
            assert_eq!(err.class(), Class::Transient, "{err}");
            assert!(err.cluster_action().is_some(), "{err}");
        }
        let crossslot = classified("-CROSSSLOT Keys in request don't hash to the same slot");
        assert_eq!(crossslot.class(), Class::Fatal);
        assert_eq!(crossslot.cluster_action(), Some(Action::Fatal));
        for line in [
            "-NOGROUP No such key 's' or consumer group 'g' in XREADGROUP with GROUP option",
            "-NOPERM this user has no permissions to access one of the keys used as arguments",
            "-WRONGTYPE Operation against a key holding the wrong kind of value",
        ] {
            let err = classified(line);
            assert_eq!(err.cluster_action(), None, "{err}");
        }
        let unblocked = classified("-UNBLOCKED client unblocked via CLIENT UNBLOCK");
        assert_eq!(unblocked.cluster_action(), None, "{unblocked}");
    }

    #[test]
    fn a_connection_error_is_never_kept_as_a_fatal_source() {
        let err = classify(
            None,
            "CONNECT",
            "s",
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "bad url",
                "redis://u:secret@h:1".to_owned(),
            )),
        );
        assert!(err.is_fatal());
        assert!(err.redis_source().is_none());
        assert!(!format!("{err} {err:?}").contains("secret"));
    }
}
