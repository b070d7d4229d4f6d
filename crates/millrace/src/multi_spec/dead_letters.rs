//! The rule "no stream read may be another's dead-letter stream", in one place: checked when a
//! multi-stream consumer starts, when a stream is added to it, and on what a pattern finds.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// How a stream breaks the rule with the streams read alongside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeadLetterClash<'a> {
    /// The stream is the dead-letter stream of this stream, which is read.
    IsDeadLetterOf(&'a str),
    /// The stream's own dead-letter stream (this one) is read.
    DeadLetterIsRead(String),
}

impl fmt::Display for DeadLetterClash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterClash::IsDeadLetterOf(owner) => {
                write!(
                    f,
                    "it is the dead-letter stream of `{owner}`, which is read"
                )
            }
            DeadLetterClash::DeadLetterIsRead(dlq) => {
                write!(
                    f,
                    "its dead-letter stream `{dlq}` is one of the streams read"
                )
            }
        }
    }
}

impl DeadLetterClash<'_> {
    /// What is wrong, the same wherever the rule is checked.
    pub(crate) fn reason(&self) -> String {
        format!(
            "breaks the rule that no stream read is another's dead-letter stream: {self}, so a consumer would read dead letters"
        )
    }
}

/// The rule over one set of streams read together (by one multi-stream consumer), given how it
/// names a stream's dead-letter stream. Built once per set: each check is a lookup.
pub(crate) struct DeadLetterRule<'a, F> {
    dead_letter_stream_of: F,
    read: HashSet<&'a str>,
    /// Each read stream's dead-letter stream, to the stream.
    owner_of: HashMap<String, &'a str>,
}

impl<'a, F: Fn(&str) -> String> DeadLetterRule<'a, F> {
    /// The rule over the streams `read`.
    pub(crate) fn over(read: impl IntoIterator<Item = &'a str>, dead_letter_stream_of: F) -> Self {
        let read: HashSet<&'a str> = read.into_iter().collect();
        let owner_of = read
            .iter()
            .map(|s| (dead_letter_stream_of(s), *s))
            .collect();
        DeadLetterRule {
            dead_letter_stream_of,
            read,
            owner_of,
        }
    }

    /// How `stream` (read already, or about to be) breaks the rule with the other streams read:
    /// it is the dead-letter stream of one of them, or one of them is its dead-letter stream.
    pub(crate) fn clash(&self, stream: &str) -> Option<DeadLetterClash<'a>> {
        if let Some(owner) = self.owner_of.get(stream).filter(|o| **o != stream) {
            return Some(DeadLetterClash::IsDeadLetterOf(owner));
        }
        let own = (self.dead_letter_stream_of)(stream);
        (own != stream && self.read.contains(own.as_str()))
            .then_some(DeadLetterClash::DeadLetterIsRead(own))
    }

    /// Whether `stream` is the dead-letter stream of a stream read (the one direction discovery
    /// skips by: a stream found next to its own dead-letter stream is still read).
    pub(crate) fn is_dead_letter_stream(&self, stream: &str) -> bool {
        matches!(self.clash(stream), Some(DeadLetterClash::IsDeadLetterOf(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dlq(stream: &str) -> String {
        format!("{stream}:dlq")
    }

    #[test]
    fn both_directions_are_told_apart() {
        let rule = DeadLetterRule::over(["a", "b", "b:dlq"], dlq);
        assert_eq!(rule.clash("a"), None);
        assert_eq!(
            rule.clash("b:dlq"),
            Some(DeadLetterClash::IsDeadLetterOf("b"))
        );
        assert_eq!(
            rule.clash("b"),
            Some(DeadLetterClash::DeadLetterIsRead("b:dlq".into()))
        );
        // Not read yet: adding `a:dlq`, or `c` whose dead-letter stream `c:dlq` is not read.
        assert_eq!(
            rule.clash("a:dlq"),
            Some(DeadLetterClash::IsDeadLetterOf("a"))
        );
        assert_eq!(rule.clash("c"), None);
        assert!(rule.is_dead_letter_stream("b:dlq") && !rule.is_dead_letter_stream("b"));
    }

    #[test]
    fn a_stream_that_is_its_own_dead_letter_stream_is_left_to_the_spec() {
        // `ConsumerSpec::validate` refuses that case with its own message.
        let rule = DeadLetterRule::over(["x"], |s: &str| s.to_owned());
        assert_eq!(rule.clash("x"), None);
    }
}
