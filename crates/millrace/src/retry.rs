//! Retry after a delay: the backoff policy of [`ConsumerOptions::retry_backoff`] and the delays it
//! gives by delivery count. How a delay is kept (in Redis, by the entry's idle time) is in
//! `consumer/retry.rs`.
//!
//! [`ConsumerOptions::retry_backoff`]: crate::ConsumerOptions::retry_backoff

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::durations::duration;

/// How long a failed entry waits before it comes back, by its delivery count. Used for `Err`,
/// panics and handler timeouts when set in
/// [`ConsumerOptions::retry_backoff`](crate::ConsumerOptions::retry_backoff); a handler's own
/// [`HandlerResult::RetryAfter`](crate::HandlerResult::RetryAfter) or
/// [`Batch::retry_after`](crate::Batch::retry_after) wins over it.
///
/// A delay is made by backdating the entry's idle time in Redis, so it can be at most
/// `claim_min_idle` (checked at start).
///
/// ```
/// use std::time::Duration;
/// use millrace::RetryBackoff;
///
/// let b = RetryBackoff::exponential(Duration::from_secs(1), Duration::from_secs(30)).jitter(0.0);
/// assert_eq!(b.delay(1), Duration::from_secs(1)); // first delivery failed
/// assert_eq!(b.delay(3), Duration::from_secs(4));
/// assert_eq!(b.delay(9), Duration::from_secs(30)); // capped
///
/// let opts: millrace::ConsumerOptions = toml::from_str(r#"
///     retry_backoff = { kind = "exponential", base = "2s", max = "40s", jitter = 0.2 }
/// "#).unwrap();
/// assert!(opts.retry_backoff.is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum RetryBackoff {
    /// The same delay after every failure.
    Fixed {
        /// The delay.
        #[serde(with = "duration")]
        delay: Duration,
    },
    /// `base × 2^(deliveries − 1)`, capped at `max`, minus up to `jitter` of it (a fraction from 0
    /// to 1), so entries that failed together spread out. Never more than `max`.
    Exponential {
        /// The delay after the first delivery failed.
        #[serde(with = "duration")]
        base: Duration,
        /// The largest delay.
        #[serde(with = "duration")]
        max: Duration,
        /// Fraction of the delay taken off at random, 0 to 1. Default 0.25.
        #[serde(default = "default_jitter")]
        jitter: f64,
    },
}

fn default_jitter() -> f64 {
    0.25
}

impl RetryBackoff {
    /// The same delay after every failure.
    pub fn fixed(delay: Duration) -> Self {
        RetryBackoff::Fixed { delay }
    }

    /// Doubling from `base` up to `max`, with the default jitter (0.25).
    pub fn exponential(base: Duration, max: Duration) -> Self {
        RetryBackoff::Exponential {
            base,
            max,
            jitter: default_jitter(),
        }
    }

    /// Sets the jitter of an exponential backoff (a fraction from 0 to 1); no effect on `Fixed`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        if let RetryBackoff::Exponential { jitter, .. } = &mut self {
            *jitter = fraction;
        }
        self
    }

    /// The delay after delivery number `deliveries` (1 for the first) failed.
    pub fn delay(&self, deliveries: u64) -> Duration {
        match *self {
            RetryBackoff::Fixed { delay } => delay,
            RetryBackoff::Exponential { base, max, jitter } => {
                let shift = u32::try_from(deliveries.saturating_sub(1).min(31)).unwrap_or(31);
                let full = base.saturating_mul(1u32 << shift).min(max);
                if jitter > 0.0 {
                    full.mul_f64(1.0 - rand::random::<f64>() * jitter.min(1.0))
                } else {
                    full
                }
            }
        }
    }

    /// The longest delay this policy gives.
    pub fn longest(&self) -> Duration {
        match *self {
            RetryBackoff::Fixed { delay } => delay,
            RetryBackoff::Exponential { max, .. } => max,
        }
    }

    /// Checks the policy against `claim_min_idle`: the field at fault and why.
    pub(crate) fn check(&self, claim_min_idle: Duration) -> Result<(), (&'static str, String)> {
        let field = "retry_backoff";
        match *self {
            RetryBackoff::Fixed { delay } if delay.is_zero() => {
                return Err((field, "`delay` must be greater than 0".into()))
            }
            RetryBackoff::Exponential { base, .. } if base.is_zero() => {
                return Err((field, "`base` must be greater than 0".into()))
            }
            RetryBackoff::Exponential { base, max, .. } if max < base => {
                return Err((
                    field,
                    format!(
                        "`max` ({}) must not be below `base` ({})",
                        fmt(max),
                        fmt(base)
                    ),
                ))
            }
            RetryBackoff::Exponential { jitter, .. } if !(0.0..=1.0).contains(&jitter) => {
                return Err((
                    field,
                    format!("`jitter` ({jitter}) must be between 0 and 1"),
                ))
            }
            _ => {}
        }
        if self.longest() > claim_min_idle {
            return Err((
                field,
                format!(
                    "its longest delay ({}) exceeds `claim_min_idle` ({}): a delay is kept by backdating the entry's idle time, so it can be at most `claim_min_idle`; lower the delay or raise `claim_min_idle`",
                    fmt(self.longest()),
                    fmt(claim_min_idle)
                ),
            ));
        }
        Ok(())
    }
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn exponential_doubles_by_delivery_count_up_to_the_cap() {
        let b = RetryBackoff::exponential(S, 10 * S).jitter(0.0);
        let got: Vec<u64> = (1..=6).map(|d| b.delay(d).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(0), S);
        assert_eq!(b.delay(u64::MAX), 10 * S);
    }

    #[test]
    fn jitter_only_shortens() {
        let b = RetryBackoff::exponential(S, 10 * S).jitter(0.5);
        for _ in 0..100 {
            let d = b.delay(2);
            assert!(d <= 2 * S && d >= S, "{d:?}");
        }
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let m = 60 * S;
        let e = |b: RetryBackoff| b.check(m).unwrap_err().1;
        assert!(e(RetryBackoff::exponential(2 * S, S)).contains("must not be below `base`"));
        assert!(e(RetryBackoff::fixed(Duration::ZERO)).contains("greater than 0"));
        assert!(e(RetryBackoff::exponential(S, 2 * S).jitter(1.5)).contains("between 0 and 1"));
        assert!(e(RetryBackoff::fixed(2 * m)).contains("exceeds `claim_min_idle`"));
        assert!(RetryBackoff::fixed(m).check(m).is_ok());
    }

    #[test]
    fn reads_from_toml() {
        #[derive(Deserialize)]
        struct T {
            b: RetryBackoff,
        }
        let t: T = toml::from_str(r#"b = { kind = "fixed", delay = "2s" }"#).unwrap();
        assert_eq!(t.b, RetryBackoff::fixed(2 * S));
        let t: T =
            toml::from_str(r#"b = { kind = "exponential", base = "1s", max = "8s" }"#).unwrap();
        assert_eq!(t.b, RetryBackoff::exponential(S, 8 * S));
        assert!(toml::from_str::<T>(r#"b = { kind = "linear", delay = "2s" }"#).is_err());
    }
}

#[cfg(test)]
mod settings_tests {
    use std::time::Duration;

    use crate::settings::Settings;
    use crate::RetryBackoff;

    #[test]
    fn the_backoff_is_read_from_a_file_and_the_environment() {
        let text = r#"
            redis = "redis://127.0.0.1:6379"
            [defaults]
            retry_backoff = { kind = "exponential", base = "1s", max = "30s" }
            [[consumers]]
            stream = "s"
            group = "g"
            consumer = "c"
        "#;
        let vars = [
            (
                "MILLRACE_DEFAULTS__RETRY_BACKOFF__BASE".to_owned(),
                "2s".to_owned(),
            ),
            (
                "MILLRACE_DEFAULTS__RETRY_BACKOFF__JITTER".to_owned(),
                "0.5".to_owned(),
            ),
        ];
        let backoff = |text: &str, vars: [(String, String); 2]| {
            let settings = Settings::parse(text, vars).unwrap();
            let handler = |_: crate::Batch<crate::RawEntry>| async { crate::HandlerResult::Ok };
            settings.consumers("s", handler)[0]
                .options()
                .retry_backoff
                .clone()
        };
        assert_eq!(
            backoff(text, vars),
            Some(
                RetryBackoff::exponential(Duration::from_secs(2), Duration::from_secs(30))
                    .jitter(0.5)
            )
        );
        let vars = [
            (
                "MILLRACE_DEFAULTS__RETRY_BACKOFF__KIND".to_owned(),
                "fixed".to_owned(),
            ),
            (
                "MILLRACE_DEFAULTS__RETRY_BACKOFF__DELAY".to_owned(),
                "5s".to_owned(),
            ),
        ];
        let bare = text.replace("retry_backoff", "# retry_backoff");
        assert_eq!(
            backoff(&bare, vars),
            Some(RetryBackoff::fixed(Duration::from_secs(5)))
        );
    }
}
