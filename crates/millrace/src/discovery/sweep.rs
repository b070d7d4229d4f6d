//! What one sweep over the keyspace has found so far, node by node, without I/O: where each node's
//! SCAN cursor stands, which matching keys are streams, which are of another type, and what a
//! complete sweep yields.

use std::collections::BTreeSet;

use crate::cluster::NodeAddress;
use crate::id::control_char_reason;

/// What a complete sweep found: the streams matching the pattern, and the matching keys that were
/// skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SweepResult {
    /// Stream keys matching the pattern.
    pub(crate) streams: BTreeSet<String>,
    /// Keys matching the pattern that hold another type (a hash, a string, …): skipped.
    pub(crate) other_type: BTreeSet<String>,
    /// Keys matching the pattern whose names are not UTF-8 (no stream name can hold them): skipped.
    pub(crate) not_utf8: usize,
    /// Keys matching the pattern whose names hold control characters (see
    /// `id::control_char_reason`): skipped.
    pub(crate) control_chars: BTreeSet<String>,
    /// `SCAN` calls the sweep took, over all nodes.
    pub(crate) scan_calls: u64,
    /// `TYPE` calls the sweep took (keys not known as streams from the sweep before).
    pub(crate) type_calls: u64,
}

/// Where one node's SCAN stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeCursor {
    /// The master to scan; `None` on one server.
    node: Option<NodeAddress>,
    /// The cursor to send next (`0` at the start).
    cursor: u64,
    /// The node answered cursor `0`: every key it held for the whole sweep was returned.
    done: bool,
}

/// A sweep in progress: one cursor per node, and what the pages so far held.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sweep {
    nodes: Vec<NodeCursor>,
    found: SweepResult,
}

/// What a matching key turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A stream.
    Stream,
    /// Another type, by its `TYPE` name.
    Other(String),
    /// Gone between `SCAN` and `TYPE`.
    Gone,
}

impl KeyKind {
    /// From a `TYPE` reply.
    pub(crate) fn from_type(name: &str) -> KeyKind {
        match name {
            "stream" => KeyKind::Stream,
            "none" => KeyKind::Gone,
            other => KeyKind::Other(other.to_owned()),
        }
    }
}

impl Sweep {
    /// A sweep over `nodes` (`[None]` on one server, the masters of a cluster).
    pub(crate) fn over(nodes: Vec<Option<NodeAddress>>) -> Sweep {
        Sweep {
            nodes: nodes
                .into_iter()
                .map(|node| NodeCursor {
                    node,
                    cursor: 0,
                    done: false,
                })
                .collect(),
            found: SweepResult::default(),
        }
    }

    /// How many nodes the sweep covers.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node `index` and the cursor to send it next; `None` once it answered its last page.
    pub(crate) fn cursor(&self, index: usize) -> Option<(Option<&NodeAddress>, u64)> {
        self.nodes
            .get(index)
            .filter(|n| !n.done)
            .map(|n| (n.node.as_ref(), n.cursor))
    }

    /// Every node answered cursor `0`.
    pub(crate) fn is_complete(&self) -> bool {
        self.nodes.iter().all(|n| n.done)
    }

    /// Splits a page's keys: the names already known as streams (`known`, the sweep before, or
    /// this sweep) are streams at once; the rest must be asked with `TYPE`. Names that are not UTF-8
    /// or hold control characters are counted and dropped.
    pub(crate) fn take_page(
        &mut self,
        index: usize,
        next_cursor: u64,
        keys: Vec<Vec<u8>>,
        known: &BTreeSet<String>,
    ) -> Vec<String> {
        self.found.scan_calls += 1;
        if let Some(node) = self.nodes.get_mut(index) {
            node.cursor = next_cursor;
            node.done = next_cursor == 0;
        }
        let mut unknown = Vec::new();
        for key in keys {
            match String::from_utf8(key) {
                Err(_) => self.found.not_utf8 += 1,
                Ok(name) if control_char_reason(&name).is_some() => {
                    self.found.control_chars.insert(name);
                }
                Ok(name) if known.contains(&name) || self.found.streams.contains(&name) => {
                    self.found.streams.insert(name);
                }
                Ok(name) => unknown.push(name),
            }
        }
        unknown
    }

    /// Records what `TYPE` said of keys [`take_page`](Self::take_page) could not place.
    pub(crate) fn take_types(&mut self, typed: Vec<(String, KeyKind)>) {
        for (name, kind) in typed {
            self.found.type_calls += 1;
            match kind {
                KeyKind::Stream => {
                    self.found.other_type.remove(&name);
                    self.found.streams.insert(name);
                }
                KeyKind::Other(_) => {
                    if !self.found.streams.contains(&name) {
                        self.found.other_type.insert(name);
                    }
                }
                KeyKind::Gone => {}
            }
        }
    }

    /// The streams of the sweep before that this sweep did not return: `SCAN` returns every key
    /// that exists for the whole sweep, so these were deleted, or moved between masters during
    /// the sweep (a slot migration). Each is asked with `TYPE` before it leaves the set.
    pub(crate) fn missing_from(&self, before: &BTreeSet<String>) -> Vec<String> {
        before
            .difference(&self.found.streams)
            .filter(|name| !self.found.other_type.contains(*name))
            .cloned()
            .collect()
    }

    /// Ends a complete sweep, given what `TYPE` said of the [missing](Self::missing_from) ones.
    pub(crate) fn finish(mut self, missing: Vec<(String, KeyKind)>) -> SweepResult {
        self.take_types(missing);
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn keys(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn node(port: u16) -> Option<NodeAddress> {
        Some(NodeAddress {
            host: "127.0.0.1".into(),
            port,
        })
    }

    #[test]
    fn a_sweep_ends_when_every_node_answered_cursor_zero() {
        let mut sweep = Sweep::over(vec![node(1), node(2)]);
        assert_eq!(sweep.node_count(), 2);
        assert_eq!(sweep.cursor(0), Some((node(1).as_ref(), 0)));
        sweep.take_page(0, 17, keys(&[]), &BTreeSet::new());
        assert_eq!(sweep.cursor(0), Some((node(1).as_ref(), 17)));
        sweep.take_page(0, 0, keys(&[]), &BTreeSet::new());
        assert_eq!(sweep.cursor(0), None);
        assert_eq!(sweep.cursor(1), Some((node(2).as_ref(), 0)));
        assert!(!sweep.is_complete());
        sweep.take_page(1, 0, keys(&[]), &BTreeSet::new());
        assert!(sweep.is_complete());
        assert_eq!(sweep.cursor(1), None);
        assert_eq!(sweep.cursor(2), None);
        assert_eq!(sweep.finish(Vec::new()).scan_calls, 3);
    }

    #[test]
    fn known_streams_skip_type_and_the_rest_are_asked() {
        let mut sweep = Sweep::over(vec![None]);
        let known = names(&["t:1:e"]);
        let mut page = keys(&["t:1:e", "t:2:e", "t:h:e", "t:3\r\n:e", "t:4\0:e"]);
        page.push(vec![b't', 0xff, b'e']);
        let unknown = sweep.take_page(0, 5, page, &known);
        assert_eq!(unknown, vec!["t:2:e".to_owned(), "t:h:e".to_owned()]);
        sweep.take_types(vec![
            ("t:2:e".into(), KeyKind::from_type("stream")),
            ("t:h:e".into(), KeyKind::from_type("hash")),
        ]);
        // SCAN may return a key twice; a stream found this sweep is not asked again.
        assert!(sweep.take_page(0, 0, keys(&["t:2:e"]), &known).is_empty());
        let result = sweep.finish(Vec::new());
        assert_eq!(result.streams, names(&["t:1:e", "t:2:e"]));
        assert_eq!(result.other_type, names(&["t:h:e"]));
        assert_eq!(result.not_utf8, 1);
        assert_eq!(result.control_chars, names(&["t:3\r\n:e", "t:4\0:e"]));
        assert_eq!((result.scan_calls, result.type_calls), (2, 2));
    }

    #[test]
    fn a_stream_the_sweep_missed_stays_only_while_type_says_stream() {
        let mut sweep = Sweep::over(vec![None]);
        let before = names(&["a", "b", "c"]);
        sweep.take_page(0, 0, keys(&["a"]), &before);
        let missing = sweep.missing_from(&before);
        assert_eq!(missing, vec!["b".to_owned(), "c".to_owned()]);
        // `b` moved to a master already swept; `c` was deleted.
        let result = sweep.finish(vec![
            ("b".into(), KeyKind::Stream),
            ("c".into(), KeyKind::Gone),
        ]);
        assert_eq!(result.streams, names(&["a", "b"]));
        assert!(result.other_type.is_empty());
    }

    #[test]
    fn a_key_that_became_another_type_leaves_and_is_counted() {
        let mut sweep = Sweep::over(vec![None]);
        let before = names(&["a", "b"]);
        sweep.take_page(0, 0, keys(&["a"]), &before);
        let result = sweep.finish(vec![("b".into(), KeyKind::Other("hash".into()))]);
        assert_eq!(result.streams, names(&["a"]));
        assert_eq!(result.other_type, names(&["b"]));
    }

    #[test]
    fn gone_keys_are_neither_streams_nor_counted() {
        let mut sweep = Sweep::over(vec![None]);
        let unknown = sweep.take_page(0, 0, keys(&["x"]), &BTreeSet::new());
        sweep.take_types(unknown.into_iter().map(|k| (k, KeyKind::Gone)).collect());
        let result = sweep.finish(Vec::new());
        assert!(result.streams.is_empty() && result.other_type.is_empty());
    }
}
