//! What a complete sweep changes in a pattern consumer, without I/O: the streams to add, the
//! streams to remove, and the matching streams that are dead-letter streams of others (skipped, so
//! no consumer reads its own dead letters).

use std::collections::BTreeSet;

use crate::multi_spec::DeadLetterRule;

/// The changes one sweep asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Found and not read yet.
    pub(crate) add: Vec<String>,
    /// Added by discovery, read now, and no longer found (deleted, or of another type now).
    pub(crate) remove: Vec<String>,
    /// Found, but the dead-letter stream of a found or read stream: never added.
    pub(crate) dead_letter_streams: Vec<String>,
}

/// The plan for the streams `found` by a sweep, given the streams read now (`in_use`), those of
/// them discovery added (`added`: a stream added by hand with `Supervisor::add_stream` is never
/// removed by discovery), and each stream's dead-letter stream.
pub(crate) fn plan(
    found: &BTreeSet<String>,
    in_use: &BTreeSet<String>,
    added: &BTreeSet<String>,
    dead_letter_stream_of: impl Fn(&str) -> String,
) -> Plan {
    let rule = DeadLetterRule::over(
        found.iter().chain(in_use).map(String::as_str),
        dead_letter_stream_of,
    );
    let (dead_letter_streams, wanted): (Vec<&String>, Vec<&String>) =
        found.iter().partition(|s| rule.is_dead_letter_stream(s));
    Plan {
        add: wanted
            .into_iter()
            .filter(|s| !in_use.contains(*s))
            .cloned()
            .collect(),
        remove: in_use
            .iter()
            .filter(|s| added.contains(*s) && !found.contains(*s))
            .cloned()
            .collect(),
        dead_letter_streams: dead_letter_streams.into_iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn dlq(stream: &str) -> String {
        format!("{stream}:dlq")
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn new_streams_are_added_and_gone_ones_removed() {
        let p = plan(&set(&["a", "c"]), &set(&["a", "b"]), &set(&["a", "b"]), dlq);
        assert_eq!(p.add, names(&["c"]));
        assert_eq!(p.remove, names(&["b"]));
        assert!(p.dead_letter_streams.is_empty());
    }

    #[test]
    fn a_stream_added_by_hand_stays() {
        let p = plan(&set(&["a"]), &set(&["a", "manual"]), &set(&["a"]), dlq);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn dead_letter_streams_are_never_added() {
        // `t:*` matches `t:1` and its dead-letter stream `t:1:dlq`, and that of a stream read now.
        let found = set(&["t:1", "t:1:dlq", "t:2:dlq"]);
        let p = plan(&found, &set(&["t:2"]), &set(&["t:2"]), dlq);
        assert_eq!(p.add, names(&["t:1"]));
        assert_eq!(p.remove, names(&["t:2"]));
        assert_eq!(p.dead_letter_streams, names(&["t:1:dlq", "t:2:dlq"]));
    }

    #[test]
    fn a_stream_dropped_while_absent_is_not_added_back_until_found() {
        // The stream's consumer dropped it when its key was deleted: nothing to do while absent...
        let p = plan(&set(&["a"]), &set(&["a"]), &set(&["a", "b"]), dlq);
        assert_eq!(p, Plan::default());
        // ...and added again once a sweep finds it.
        let p = plan(&set(&["a", "b"]), &set(&["a"]), &set(&["a"]), dlq);
        assert_eq!(p.add, names(&["b"]));
    }
}
