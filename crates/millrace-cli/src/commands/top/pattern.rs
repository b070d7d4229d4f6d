//! What `top` says about its pattern and group: how many keys match, which of them are not streams
//! (skipped, as a pattern consumer skips them), and how many of the matching streams the group
//! given with `--group` reads (the set a pattern consumer of that group uses; the others are not
//! picked up yet, or were dropped).

use serde::Serialize;

use crate::key::Key;
use crate::render::{escape, JsonBytes};

/// At most this many skipped keys are named in the text header.
const NAMED_IN_HEADER: usize = 5;

/// A key matching the pattern that is not a stream.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SkippedKey {
    pub(super) key: JsonBytes,
    /// Its `TYPE`: `hash`, `string`, ...
    #[serde(rename = "type")]
    pub(super) kind: String,
}

/// The header of a view with a pattern.
#[derive(Debug, Serialize)]
pub(super) struct PatternSummary {
    pub(super) pattern: String,
    /// Streams matching the pattern.
    pub(super) streams: usize,
    /// With `--group`: the group, and how many of the matching streams have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) group: Option<JsonBytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) streams_with_group: Option<usize>,
    /// Matching keys of other types.
    pub(super) skipped: Vec<SkippedKey>,
}

impl PatternSummary {
    /// `` `tenant:*:events`: 3 streams, 2 with group `billing`; 1 key of another type skipped:
    /// tenant:h:events (hash) ``
    pub(super) fn line(&self) -> String {
        let mut line = format!(
            "`{}`: {} stream{}",
            self.pattern,
            self.streams,
            plural(self.streams)
        );
        if let (Some(group), Some(n)) = (&self.group, self.streams_with_group) {
            line.push_str(&format!(", {n} with group `{}`", escape(&group.0)));
        }
        let n = self.skipped.len();
        if n > 0 {
            let named: Vec<String> = self
                .skipped
                .iter()
                .take(NAMED_IN_HEADER)
                .map(|s| format!("{} ({})", escape(&s.key.0), s.kind))
                .collect();
            let more = if n > NAMED_IN_HEADER { ", …" } else { "" };
            line.push_str(&format!(
                "; {n} key{} of another type skipped: {}{more}",
                plural(n),
                named.join(", ")
            ));
        }
        line
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Whether a group row is shown: every group without `--group`, else that group only.
pub(super) fn shows_group(only: Option<&Key>, name: &[u8]) -> bool {
    only.is_none_or(|g| g.as_bytes() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped(key: &str, kind: &str) -> SkippedKey {
        SkippedKey {
            key: JsonBytes(key.into()),
            kind: kind.into(),
        }
    }

    #[test]
    fn the_header_counts_streams_the_group_and_skipped_keys() {
        let mut summary = PatternSummary {
            pattern: "t:*".into(),
            streams: 1,
            group: None,
            streams_with_group: None,
            skipped: Vec::new(),
        };
        assert_eq!(summary.line(), "`t:*`: 1 stream");
        summary.streams = 3;
        summary.group = Some(JsonBytes(b"billing".to_vec()));
        summary.streams_with_group = Some(2);
        summary.skipped = vec![skipped("t:h", "hash")];
        assert_eq!(
            summary.line(),
            "`t:*`: 3 streams, 2 with group `billing`; 1 key of another type skipped: t:h (hash)"
        );
        summary.skipped = (0..7)
            .map(|i| skipped(&format!("k{i}"), "string"))
            .collect();
        let line = summary.line();
        assert!(line.ends_with("7 keys of another type skipped: k0 (string), k1 (string), k2 (string), k3 (string), k4 (string), …"), "{line}");
    }

    #[test]
    fn only_the_chosen_group_is_shown() {
        let billing = Key::from(&b"billing"[..]);
        assert!(shows_group(None, b"anything"));
        assert!(shows_group(Some(&billing), b"billing"));
        assert!(!shows_group(Some(&billing), b"audit"));
    }
}
