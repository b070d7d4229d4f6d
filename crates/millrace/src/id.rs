//! The identity of one consumer: its (stream, group, consumer) triple, named in every error, log
//! span and metric label.

use std::fmt;
use std::sync::Arc;

use crate::entry::BatchMeta;

/// Names one consumer: a (stream, group, consumer) triple.
///
/// ```
/// let id = millrace::ConsumerId::new("orders", "processors", "proc-1");
/// assert_eq!(id.to_string(), "stream `orders`, group `processors`, consumer `proc-1`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId {
    /// Stream key.
    pub stream: Arc<str>,
    /// Consumer group name.
    pub group: Arc<str>,
    /// Consumer name within the group.
    pub consumer: Arc<str>,
}

impl ConsumerId {
    /// Builds an id.
    pub fn new(
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        ConsumerId {
            stream: Arc::from(stream.into()),
            group: Arc::from(group.into()),
            consumer: Arc::from(consumer.into()),
        }
    }

    pub(crate) fn meta(&self) -> BatchMeta {
        BatchMeta {
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
        }
    }
}

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream `{}`, group `{}`, consumer `{}`",
            Printable(&self.stream),
            Printable(&self.group),
            Printable(&self.consumer)
        )
    }
}

/// A name for messages and logs: control characters are written escaped (`\r`, `\n`,
/// `\u{0}`), so a name never breaks or forges a log line.
pub(crate) struct Printable<'a>(pub(crate) &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_ascii_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Why `name` (a stream, group or consumer name, a key pattern, a key found by one) cannot be
/// used: it holds an ASCII control character (NUL, CR, LF, any other C0, or DEL). Redis writes
/// such names mangled in its replies (CR and LF as spaces), so an error about the stream could
/// not be told apart from one about another. `None` for a usable name.
pub(crate) fn control_char_reason(name: &str) -> Option<String> {
    let (at, c) = name.char_indices().find(|(_, c)| c.is_ascii_control())?;
    Some(format!(
        "holds the control character `{}` at byte {at}: Redis writes such names mangled in its \
         replies, so its errors could not be matched to the stream; use a name without control \
         characters (NUL, CR, LF, tab, ESC, DEL, …), renaming the key if it exists (`RENAME`)",
        c.escape_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_named_and_printed_escaped() {
        assert_eq!(control_char_reason("tenant:1:events"), None);
        assert_eq!(control_char_reason("ünïcode ok"), None);
        for (name, shown) in [
            ("a\rb", "\\r"),
            ("a\nb", "\\n"),
            ("a\0b", "\\u{0}"),
            ("a\x1bb", "\\u{1b}"),
            ("a\x7fb", "\\u{7f}"),
        ] {
            let reason = control_char_reason(name).expect("refused");
            assert!(reason.contains(&format!("`{shown}` at byte 1")), "{reason}");
        }
        let id = ConsumerId::new("a\r\nb", "g\0", "c");
        assert_eq!(
            id.to_string(),
            "stream `a\\r\\nb`, group `g\\u{0}`, consumer `c`"
        );
    }
}
