//! [`RestartPolicy`]: how the supervisor restarts failed consumers, and the capped exponential
//! backoff with jitter that restarts and reconnects share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the supervisor restarts failed consumers: exponential backoff with jitter, and a limit of
/// `max_restarts` within `window`, past which it gives up and escalates.
///
/// ```
/// let policy = millrace::RestartPolicy::default();
/// assert_eq!(policy.max_restarts, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Restarts allowed within `window`. Default 5.
    pub max_restarts: usize,
    /// The sliding window restarts are counted in. Default 60s.
    #[serde(with = "super::duration")]
    pub window: Duration,
    /// First backoff delay. Default 100ms.
    #[serde(with = "super::duration")]
    pub backoff_initial: Duration,
    /// Largest backoff delay. Default 10s.
    #[serde(with = "super::duration")]
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.window.is_zero() {
            return Err(Error::config(
                None,
                "restart.window",
                "must be greater than 0",
            ));
        }
        if self.backoff_initial.is_zero() {
            return Err(Error::config(
                None,
                "restart.backoff_initial",
                "must be greater than 0",
            ));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(Error::config(
                None,
                "restart.backoff_max",
                "must not be below `backoff_initial`",
            ));
        }
        Ok(())
    }

    /// The delay before restart number `attempt` (0-based): `initial * 2^attempt`, capped, with up
    /// to 25% jitter subtracted so restarts of many consumers spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff_with_jitter(self.backoff_initial, self.backoff_max, attempt)
    }
}

/// Capped exponential backoff with jitter.
pub(crate) fn backoff_with_jitter(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let capped = exp.min(max);
    let jitter = rand::random::<f64>() * 0.25;
    capped.mul_f64(1.0 - jitter)
}
