//! Whether two keys can be used in one script or transaction on a cluster, and how to make them.

use crate::cluster::slot::{hash_tag, key_slot};

/// Where two keys live relative to each other: a multi-key command or script on both works only
/// when they share a slot (else the server answers `CROSSSLOT`).
///
/// For the dead-letter move: [`SameSlot`](Self::SameSlot) takes the atomic Lua move,
/// [`Apart`](Self::Apart) the step path (add to the dead-letter stream, then acknowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Colocation {
    /// Both keys hash to this slot.
    SameSlot(u16),
    /// The keys hash to different slots, possibly on different masters.
    Apart {
        /// The first key's slot.
        first: u16,
        /// The second key's slot.
        second: u16,
    },
}

impl Colocation {
    /// Where `first` and `second` live relative to each other.
    pub(crate) fn of(first: &[u8], second: &[u8]) -> Colocation {
        match (key_slot(first), key_slot(second)) {
            (a, b) if a == b => Colocation::SameSlot(a),
            (first, second) => Colocation::Apart { first, second },
        }
    }

    /// Whether one script or `MULTI` may touch both keys.
    pub(crate) fn is_same_slot(self) -> bool {
        matches!(self, Colocation::SameSlot(_))
    }
}

/// Names for `first` and `second` that share a slot, as advice for a log line or an error: the
/// part of `first` before any tag, braced, becomes the tag of both. `orders:new` and
/// `orders:new:dlq` become `{orders:new}` and `{orders:new}:dlq`; a second key that does not start
/// with the first gets the same tag in front (`{orders:new}audit`).
pub(crate) fn hash_tag_hint(first: &str, second: &str) -> String {
    let tag = match hash_tag(first.as_bytes()) {
        Some(tag) => String::from_utf8_lossy(tag).into_owned(),
        None => first.to_owned(),
    };
    let tagged_first = if hash_tag(first.as_bytes()).is_some() {
        first.to_owned()
    } else {
        format!("{{{first}}}")
    };
    let tagged_second = match second.strip_prefix(first) {
        Some(rest) => format!("{tagged_first}{rest}"),
        None => format!("{{{tag}}}{second}"),
    };
    format!(
        "`{first}` and `{second}` hash to different slots, so they cannot be used in one script; \
         name them `{tagged_first}` and `{tagged_second}` (a hash tag) to keep them in one slot"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::key_slot;

    #[test]
    fn a_stream_and_its_default_dead_letter_stream_are_apart() {
        let c = Colocation::of(b"orders:new", b"orders:new:dlq");
        assert!(!c.is_same_slot());
        assert_eq!(
            c,
            Colocation::Apart {
                first: key_slot(b"orders:new"),
                second: key_slot(b"orders:new:dlq")
            }
        );
    }

    #[test]
    fn a_hash_tag_puts_them_together() {
        let c = Colocation::of(b"{orders:new}", b"{orders:new}:dlq");
        assert_eq!(c, Colocation::SameSlot(key_slot(b"orders:new")));
        assert!(c.is_same_slot());
    }

    #[test]
    fn the_hint_names_keys_that_share_a_slot() {
        let hint = hash_tag_hint("orders:new", "orders:new:dlq");
        assert!(
            hint.contains("`{orders:new}` and `{orders:new}:dlq`"),
            "{hint}"
        );
        let hint = hash_tag_hint("orders", "audit");
        assert!(hint.contains("`{orders}` and `{orders}audit`"), "{hint}");
        let hint = hash_tag_hint("{o}new", "dead");
        assert!(hint.contains("`{o}new` and `{o}dead`"), "{hint}");
        for (a, b) in [("{orders}", "{orders}audit"), ("{o}new", "{o}dead")] {
            assert!(Colocation::of(a.as_bytes(), b.as_bytes()).is_same_slot());
        }
    }
}
