//! Checking a [`MultiStreamSpec`] before it starts: its names, streams or pattern, dead-letter
//! streams, options and handler, with errors that name the group, the consumer and the stream.

use std::collections::HashSet;

use super::{DeadLetterRule, MultiStreamSpec, Streams, MIN_DISCOVERY_INTERVAL};
use crate::error::{Error, Result};
use crate::id::{control_char_reason, Printable};
use crate::spec::{MAX_NAME_LEN, STREAM_PLACEHOLDER};

impl MultiStreamSpec {
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
        let rule = DeadLetterRule::over(streams.iter().map(String::as_str), |s| {
            self.dead_letter_stream_of(s)
        });
        for stream in streams {
            if let Some(clash) = rule.clash(stream) {
                let what = format!(
                    "{}; drop one of the two from the streams or set another `dead_letter_stream`",
                    clash.reason()
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
