//! The consumer's handle on its control connection: bound to its `ConsumerId`, it names every error
//! after the consumer and the key, and owns the one retry policy every step of a consumer uses.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use crate::config::backoff_with_jitter;
use crate::connection::Control;
use crate::error::{Class, Error, Result};
use crate::id::ConsumerId;

/// Transient failures a step retries before it fails the session (which reconnects and replays).
const ATTEMPTS: u32 = 10;
/// First pause between attempts; it doubles up to [`ConsumerClient`]'s cap.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between two attempts of one step.
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// The control connection of one consumer, with its identity and retry policy. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ConsumerClient {
    id: ConsumerId,
    conn: Control,
    longest_pause: Duration,
}

impl std::fmt::Debug for ConsumerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerClient")
            .field("consumer", &self.id)
            .finish_non_exhaustive()
    }
}

impl ConsumerClient {
    pub(crate) fn new(id: ConsumerId, conn: Control, reconnect_backoff_max: Duration) -> Self {
        ConsumerClient {
            id,
            conn,
            longest_pause: reconnect_backoff_max.min(LONGEST_PAUSE),
        }
    }

    pub(crate) fn id(&self) -> &ConsumerId {
        &self.id
    }

    /// The connection, for a single attempt (best-effort commands, or ones whose failure ends the
    /// session anyway).
    pub(crate) fn conn(&mut self) -> &mut Control {
        &mut self.conn
    }

    /// A redis-rs error as the consumer's [`Error`], classified (transient, group lost, fatal).
    pub(crate) fn error(&self, command: &'static str, key: &str, e: redis::RedisError) -> Error {
        Error::from_redis(&self.id, command, key, e)
    }

    /// Runs `op` until it succeeds, retrying transient failures with capped, jittered backoff up
    /// to [`ATTEMPTS`] times. Every consumer step that must land (acks, dead letters, ownership,
    /// claims) goes through here, so all share one policy.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        command: &'static str,
        key: &str,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut(Control) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut attempt = 0u32;
        loop {
            match op(self.conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = self.error(command, key, e);
                    if err.class() != Class::Transient || attempt >= ATTEMPTS {
                        return Err(err);
                    }
                    let delay = backoff_with_jitter(FIRST_PAUSE, self.longest_pause, attempt);
                    warn!(error = %err, retry_in = ?delay, "retrying");
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
