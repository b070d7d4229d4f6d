//! How a producer keeps its streams bounded: the `MAXLEN` / `MINID` part of each `XADD`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::entry::EntryId;
use crate::error::{Error, Result};

/// A trimming rule sent with every `XADD` of a [`Producer`](super::Producer).
///
/// Approximate by default (`MAXLEN ~` / `MINID ~`): Redis trims whole macro nodes only, so a stream
/// keeps at least the asked number (or age) of entries and a little more, at a fraction of the
/// cost of exact trimming. [`Trim::exact`] trims to the entry (`=`), which costs more per add.
///
/// Trimming deletes entries whether or not a group has read them: size the bound well above the
/// largest lag a consumer group may build up, or entries are lost before they are handled (a
/// trimmed pending entry comes back to its consumer as a deleted entry and is acknowledged).
///
/// ```
/// use std::time::Duration;
/// use millrace::producer::Trim;
///
/// let by_count = Trim::max_len(100_000);                  // MAXLEN ~ 100000
/// let by_age = Trim::max_age(Duration::from_secs(86_400)); // MINID ~ <now - 1 day>
/// let exact = Trim::max_len(1_000).exact();               // MAXLEN = 1000
/// # let _ = (by_count, by_age, exact);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    rule: Rule,
    exact: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    MaxLen(u64),
    MinId(EntryId),
    MaxAge(Duration),
}

impl Trim {
    /// Keeps about the newest `len` entries (`MAXLEN ~ len`).
    pub fn max_len(len: u64) -> Trim {
        Trim {
            rule: Rule::MaxLen(len),
            exact: false,
        }
    }

    /// Drops the entries with ids below `id` (`MINID ~ id`).
    pub fn min_id(id: EntryId) -> Trim {
        Trim {
            rule: Rule::MinId(id),
            exact: false,
        }
    }

    /// Drops the entries older than `age` at the moment of each add (`MINID ~ <now - age>`, from
    /// this machine's clock, since an entry id's first part is its add time in milliseconds).
    pub fn max_age(age: Duration) -> Trim {
        Trim {
            rule: Rule::MaxAge(age),
            exact: false,
        }
    }

    /// Trims exactly (`=`) instead of approximately (`~`).
    pub fn exact(mut self) -> Trim {
        self.exact = true;
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        let refuse = |reason: &str| Err(Error::config(None, "producer.trim", reason));
        match self.rule {
            Rule::MaxLen(0) => {
                refuse("is `max_len(0)`, which deletes every entry as it is added: keep at least 1")
            }
            Rule::MaxAge(age) if age < Duration::from_millis(1) => {
                refuse("is `max_age` under 1ms, which deletes every entry as it is added")
            }
            _ => Ok(()),
        }
    }

    /// Appends `MAXLEN|MINID ~|= threshold` to an `XADD` being built.
    pub(super) fn write(&self, cmd: &mut redis::Cmd) {
        let how = if self.exact { "=" } else { "~" };
        match self.rule {
            Rule::MaxLen(len) => cmd.arg("MAXLEN").arg(how).arg(len),
            Rule::MinId(id) => cmd.arg("MINID").arg(how).arg(id.to_string()),
            Rule::MaxAge(age) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let floor = now.saturating_sub(age).as_millis() as u64;
                cmd.arg("MINID").arg(how).arg(floor)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(trim: Trim) -> Vec<String> {
        let mut cmd = redis::cmd("XADD");
        trim.write(&mut cmd);
        cmd.args_iter()
            .skip(1)
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn approximate_by_default_exact_when_asked() {
        assert_eq!(args(Trim::max_len(10)), ["MAXLEN", "~", "10"]);
        assert_eq!(args(Trim::max_len(10).exact()), ["MAXLEN", "=", "10"]);
        assert_eq!(
            args(Trim::min_id(EntryId::new(5, 1))),
            ["MINID", "~", "5-1"]
        );
        let age = args(Trim::max_age(Duration::from_secs(60)));
        assert_eq!(age[..2], ["MINID", "~"]);
        let floor: u64 = age[2].parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(floor <= now - 60_000 && floor > now - 120_000, "{floor}");
    }

    #[test]
    fn bounds_that_delete_everything_are_refused() {
        assert!(Trim::max_len(0).validate().is_err());
        assert!(Trim::max_age(Duration::ZERO).validate().is_err());
        assert!(Trim::max_len(1).validate().is_ok());
    }
}
