//! The one error type of the CLI, its exit codes, and the translation of Redis errors into
//! messages that say what to do.

use std::fmt;
use std::process::ExitCode;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// A runtime or Redis error (also: missing stream or group, wrong key type): exit 1.
    Runtime,
    /// A usage error the argument parser could not catch: exit 2.
    Usage,
    /// The command refused to do something unsafe (trim without `--force`, purge without
    /// confirmation): exit 3.
    Refused,
    /// Interrupted by Ctrl-C (SIGINT), the shell's convention: exit 130.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub(crate) fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Exit::Runtime => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::Interrupted => 130,
        })
    }
}

/// A failed command: the exit kind and a message for people (lower case, says what to do).
#[derive(Debug)]
pub(crate) struct CliError {
    /// Which exit code to use.
    pub(crate) exit: Exit,
    /// What went wrong and what to do about it.
    pub(crate) message: String,
}

/// Result of a CLI operation.
pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    /// A runtime error (exit 1).
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Runtime,
            message: message.into(),
        }
    }

    /// A usage error (exit 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// A refusal for safety (exit 3).
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Refused,
            message: message.into(),
        }
    }

    /// Ctrl-C ended a command that runs until interrupted (`tail`, `top`): exit 130, quietly.
    pub(crate) fn interrupted() -> Self {
        CliError {
            exit: Exit::Interrupted,
            message: String::new(),
        }
    }

    /// The output pipe was closed (`millrace tail | head`): end quietly.
    pub(crate) fn broken_pipe() -> Self {
        CliError {
            exit: Exit::Runtime,
            message: String::new(),
        }
    }

    /// True for [`CliError::broken_pipe`].
    pub(crate) fn is_broken_pipe(&self) -> bool {
        self.message.is_empty() && self.exit == Exit::Runtime
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::broken_pipe()
        } else {
            CliError::runtime(format!("i/o error: {e}"))
        }
    }
}

/// Translates a Redis error that no caller explained more precisely. `target` is the redacted URL.
pub(crate) fn from_redis(e: &RedisError, target: &str) -> CliError {
    if e.is_connection_refusal() {
        return CliError::runtime(format!(
            "cannot connect to Redis at {target}: {e}; is the server running? Point --redis (or REDIS_URL) at it"
        ));
    }
    if e.is_timeout() {
        return CliError::runtime(format!(
            "Redis at {target} did not answer in time ({e}); check that the server is not overloaded or paused"
        ));
    }
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        return CliError::runtime(format!(
            "authentication failed at {target}; check the user name and password in --redis (or REDIS_URL)"
        ));
    }
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::NoPerm) => CliError::runtime(format!(
            "permission denied by Redis ({e}); the ACL user of --redis needs this command and key"
        )),
        ErrorKind::Server(ServerErrorKind::ReadOnly) => CliError::runtime(format!(
            "{target} is a read-only replica ({e}); point --redis at the primary"
        )),
        ErrorKind::InvalidClientConfig => CliError::usage(format!(
            "invalid Redis URL {target}: {e}; expected e.g. redis://[user:password@]host:6379[/db]"
        )),
        ErrorKind::Io | ErrorKind::Server(ServerErrorKind::BusyLoading) => {
            CliError::runtime(format!("lost the connection to Redis at {target}: {e}"))
        }
        _ => CliError::runtime(format!("Redis error: {e}")),
    }
}

/// The error code of a server error reply (`WRONGTYPE`, `NOGROUP`, `ERR`, ...).
pub(crate) fn code(e: &RedisError) -> Option<&str> {
    e.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Exit::Runtime.code(), ExitCode::from(1));
        assert_eq!(Exit::Usage.code(), ExitCode::from(2));
        assert_eq!(Exit::Refused.code(), ExitCode::from(3));
        assert_eq!(Exit::Interrupted.code(), ExitCode::from(130));
    }
}
