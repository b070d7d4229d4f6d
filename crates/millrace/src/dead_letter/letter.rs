//! One entry of a dead-letter stream, read back.

use crate::entry::{EntryId, RawEntry};

/// The metadata field names, in the order they lead every dead-letter entry.
pub const META_FIELDS: [&str; 7] = [
    "millrace.source_stream",
    "millrace.source_id",
    "millrace.group",
    "millrace.consumer",
    "millrace.deliveries",
    "millrace.reason",
    "millrace.dead_lettered_at_ms",
];

/// A dead-letter entry read back from the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: EntryId,
    /// The stream it came from.
    pub source_stream: String,
    /// Its id in the source stream.
    pub source_id: Option<EntryId>,
    /// The consumer group it failed in.
    pub group: String,
    /// The consumer that moved it.
    pub consumer: String,
    /// Delivery count at the move, when known.
    pub deliveries: Option<u64>,
    /// Why it was moved.
    pub reason: String,
    /// When it was moved (Unix milliseconds).
    pub dead_lettered_at_ms: Option<u64>,
    /// The original fields, in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DeadLetter {
    /// Reads a dead-letter entry; `None` when the entry does not start with the metadata fields.
    pub fn parse(entry: &RawEntry) -> Option<DeadLetter> {
        if entry.fields.len() < META_FIELDS.len()
            || entry
                .fields
                .iter()
                .zip(META_FIELDS.iter())
                .any(|((k, _), name)| k.as_slice() != name.as_bytes())
        {
            return None;
        }
        let text = |i: usize| String::from_utf8_lossy(&entry.fields[i].1).into_owned();
        Some(DeadLetter {
            id: entry.id,
            source_stream: text(0),
            source_id: text(1).parse().ok(),
            group: text(2),
            consumer: text(3),
            deliveries: text(4).parse().ok(),
            reason: text(5),
            dead_lettered_at_ms: text(6).parse().ok(),
            fields: entry.fields[META_FIELDS.len()..].to_vec(),
        })
    }
}

/// One entry of a dead-letter stream: the entry as stored, and its dead-letter reading when it
/// starts with [`META_FIELDS`] (entries written there by something else have none).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Letter {
    /// The entry as stored in the dead-letter stream.
    pub entry: RawEntry,
    /// The entry read as a dead letter; `None` when it is not one.
    pub dead_letter: Option<DeadLetter>,
}

impl Letter {
    /// Reads an entry of a dead-letter stream.
    pub fn new(entry: RawEntry) -> Letter {
        let dead_letter = DeadLetter::parse(&entry);
        Letter { entry, dead_letter }
    }

    /// Its id in the dead-letter stream.
    pub fn id(&self) -> EntryId {
        self.entry.id
    }

    /// True when it is a dead letter that came from `stream` (compared byte for byte).
    pub fn is_from(&self, stream: &[u8]) -> bool {
        self.dead_letter.is_some() && self.entry.fields[0].1 == stream
    }

    /// True when it is a dead letter whose reason contains `text`.
    pub fn reason_contains(&self, text: &str) -> bool {
        self.dead_letter
            .as_ref()
            .is_some_and(|d| d.reason.contains(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(source: &[u8], reason: &str, extra: &[(&[u8], &[u8])]) -> RawEntry {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = META_FIELDS
            .iter()
            .zip([
                source,
                b"5-0",
                b"g",
                b"c",
                b"3",
                reason.as_bytes(),
                b"1700000000000",
            ])
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect();
        fields.extend(extra.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
        RawEntry::new(EntryId::new(9, 0), fields)
    }

    #[test]
    fn a_dead_letter_reads_back_with_its_metadata_and_fields() {
        let letter = Letter::new(dead(b"orders", "timeout", &[(b"k", b"\xff")]));
        let d = letter.dead_letter.as_ref().unwrap();
        assert_eq!(d.source_id, Some(EntryId::new(5, 0)));
        assert_eq!(d.deliveries, Some(3));
        assert_eq!(d.fields, vec![(b"k".to_vec(), b"\xff".to_vec())]);
        assert!(letter.is_from(b"orders"));
        assert!(!letter.is_from(b"orders2"));
        assert!(letter.reason_contains("time"));
    }

    #[test]
    fn an_entry_without_the_metadata_is_not_a_dead_letter() {
        let letter = Letter::new(RawEntry::new(
            EntryId::new(1, 0),
            vec![(b"millrace.source_stream".to_vec(), b"orders".to_vec())],
        ));
        assert!(letter.dead_letter.is_none());
        assert!(!letter.is_from(b"orders"));
        assert!(!letter.reason_contains(""));
    }

    #[test]
    fn a_non_utf8_source_stream_is_matched_byte_for_byte() {
        let letter = Letter::new(dead(b"\xffs", "r", &[]));
        assert!(letter.is_from(b"\xffs"));
        assert!(!letter.is_from("\u{fffd}s".as_bytes()));
    }
}
