//! What a key holds, asked of the server, and the errors that say it: no such stream, another
//! type, no such group.

use redis::{Cmd, FromRedisValue, RedisError, Value};

use super::Redis;
use crate::error::{self, CliError, Result};
use crate::key::Key;

impl Redis {
    /// `TYPE key`: `none`, `string`, `stream`, ...
    pub(crate) async fn key_type(&mut self, key: &[u8]) -> Result<String> {
        let v: Value = self.query(redis::cmd("TYPE").arg(key)).await?;
        Ok(crate::value::text(&v).unwrap_or_default())
    }

    /// What `key` is: a stream, nothing, or something else.
    pub(crate) async fn stream_state(&mut self, key: &Key) -> Result<KeyState> {
        Ok(match self.key_type(key.as_bytes()).await?.as_str() {
            "stream" => KeyState::Stream,
            "none" => KeyState::Missing,
            other => KeyState::Other(other.to_owned()),
        })
    }

    /// Fails with a clear message unless `key` holds a stream.
    pub(crate) async fn require_stream(&mut self, key: &Key) -> Result<()> {
        match self.stream_state(key).await? {
            KeyState::Stream => Ok(()),
            KeyState::Missing => Err(no_such_stream(key)),
            KeyState::Other(t) => Err(wrong_type(key, &t)),
        }
    }

    /// Explains a `NOGROUP` (or `ERR no such key`) reply for `stream`/`group`.
    pub(crate) async fn explain_missing(&mut self, stream: &Key, group: &Key) -> CliError {
        match self.stream_state(stream).await {
            Ok(KeyState::Missing) => no_such_stream(stream),
            Ok(KeyState::Other(t)) => wrong_type(stream, &t),
            Ok(KeyState::Stream) => no_such_group(stream, group),
            Err(e) => e,
        }
    }

    /// Runs a command on `stream`/`group`, explaining NOGROUP, WRONGTYPE and missing keys.
    pub(crate) async fn group_query<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        stream: &Key,
        group: &Key,
    ) -> Result<T> {
        match self.raw(cmd).await {
            Ok(v) => Ok(v),
            Err(e) if is_missing(&e) => Err(self.explain_missing(stream, group).await),
            Err(e) => Err(self.error(&e)),
        }
    }
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// A stream.
    Stream,
    /// Nothing.
    Missing,
    /// Another type, named as `TYPE` does.
    Other(String),
}

/// True for the replies Redis gives for a missing key, a missing group, or a wrong key type.
pub(crate) fn is_missing(e: &RedisError) -> bool {
    match error::code(e) {
        Some("NOGROUP" | "WRONGTYPE") => true,
        Some("ERR") => e
            .detail()
            .is_some_and(|d| d.to_ascii_lowercase().contains("no such key")),
        _ => false,
    }
}

/// "no such stream" with a hint.
pub(crate) fn no_such_stream(key: &Key) -> CliError {
    CliError::runtime(format!(
        "no such stream `{key}`; list the streams with `millrace streams`"
    ))
}

/// "key is a string, not a stream".
pub(crate) fn wrong_type(key: &Key, actual: &str) -> CliError {
    CliError::runtime(format!("key `{key}` is a {actual}, not a stream"))
}

/// "group does not exist" with a hint.
pub(crate) fn no_such_group(stream: &Key, group: &Key) -> CliError {
    CliError::runtime(format!(
        "group `{group}` does not exist on stream `{stream}`; list its groups with `millrace groups {stream}`"
    ))
}
