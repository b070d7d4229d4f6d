//! A tolerant, binary-safe parser for stream replies built straight from `redis::Value`.
//!
//! redis-rs's `StreamReadReply` fails a whole batch when one field name is not UTF-8 (after the
//! server already put every entry into the pending list) and collapses duplicate fields. This parser
//! keeps fields as bytes, in order, and isolates every oddity to the one entry it concerns.

use redis::Value;

use crate::entry::{EntryId, RawEntry};

/// One element of a stream reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadItem {
    /// A live entry.
    Entry(RawEntry),
    /// An entry that is pending but was deleted or trimmed from the stream (`[id, nil]`).
    Tombstone(EntryId),
    /// Something that is not an entry; `id` is set when the id at least could be read.
    Malformed {
        /// The entry id, when it could be read.
        id: Option<EntryId>,
        /// What was wrong.
        reason: String,
    },
}

impl ReadItem {
    /// The id of the item, when known.
    pub fn id(&self) -> Option<EntryId> {
        match self {
            ReadItem::Entry(e) => Some(e.id),
            ReadItem::Tombstone(id) => Some(*id),
            ReadItem::Malformed { id, .. } => *id,
        }
    }
}

pub(crate) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

pub(crate) fn id_of(v: Value) -> Option<EntryId> {
    bytes(v).and_then(|b| EntryId::from_bytes(&b))
}

fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// Parses one `[id, [f, v, f, v, ...]]` element.
pub fn parse_entry(v: Value) -> ReadItem {
    let Some(parts) = items(v) else {
        return ReadItem::Malformed {
            id: None,
            reason: "an entry is not an array".into(),
        };
    };
    let mut parts = parts.into_iter();
    let (Some(id), fields) = (parts.next(), parts.next()) else {
        return ReadItem::Malformed {
            id: None,
            reason: "an entry has no id".into(),
        };
    };
    let Some(id) = id_of(id) else {
        return ReadItem::Malformed {
            id: None,
            reason: "an entry id is not of the form <ms>-<seq>".into(),
        };
    };
    let pairs: Vec<(Value, Value)> = match fields {
        None | Some(Value::Nil) => return ReadItem::Tombstone(id),
        Some(Value::Map(map)) => map,
        Some(other) => match items(other) {
            Some(flat) if flat.len() % 2 != 0 => {
                return ReadItem::Malformed {
                    id: Some(id),
                    reason: "odd number of field/value elements".into(),
                }
            }
            Some(flat) => {
                let mut it = flat.into_iter();
                std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
            }
            None => {
                return ReadItem::Malformed {
                    id: Some(id),
                    reason: "entry fields are not an array".into(),
                }
            }
        },
    };
    if pairs.is_empty() {
        // XADD cannot create an entry without fields: an empty list is a deleted entry.
        return ReadItem::Tombstone(id);
    }
    let mut fields = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        match (bytes(k), bytes(v)) {
            (Some(k), Some(v)) => fields.push((k, v)),
            _ => {
                return ReadItem::Malformed {
                    id: Some(id),
                    reason: "a field or value is not a string".into(),
                }
            }
        }
    }
    ReadItem::Entry(RawEntry { id, fields })
}

/// Parses a list of entries.
pub fn parse_entries(v: Value) -> Vec<ReadItem> {
    match items(v) {
        Some(list) => list.into_iter().map(parse_entry).collect(),
        None => vec![ReadItem::Malformed {
            id: None,
            reason: "entry list is not an array".into(),
        }],
    }
}

/// Parses an `XREADGROUP`/`XREAD` reply for a single stream (RESP2 array or RESP3 map). A BLOCK
/// timeout (nil) gives an empty list.
pub fn parse_read_reply(v: Value) -> Vec<ReadItem> {
    let streams: Vec<(Value, Value)> = match v {
        Value::Nil => return Vec::new(),
        Value::Map(m) => m,
        other => match items(other) {
            Some(list) => list
                .into_iter()
                .filter_map(|s| {
                    let mut it = items(s)?.into_iter();
                    Some((it.next()?, it.next()?))
                })
                .collect(),
            None => {
                return vec![ReadItem::Malformed {
                    id: None,
                    reason: "read reply is not an array".into(),
                }]
            }
        },
    };
    let mut out = Vec::new();
    for (_key, entries) in streams {
        out.extend(parse_entries(entries));
    }
    out
}

/// A parsed `XAUTOCLAIM` reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AutoClaim {
    /// Cursor for the next call; `0-0` when a full pass is complete.
    pub next: EntryId,
    /// Claimed entries (tombstones possible on old servers).
    pub claimed: Vec<ReadItem>,
    /// Ids that were pending but no longer exist; Redis removed them from the pending list.
    pub deleted: Vec<EntryId>,
}

/// Parses an `XAUTOCLAIM` reply `[cursor, [entries], [deleted ids]]`.
pub fn parse_autoclaim(v: Value) -> AutoClaim {
    let mut it = items(v).unwrap_or_default().into_iter();
    let next = it.next().and_then(id_of).unwrap_or(EntryId::MIN);
    let claimed = it.next().map(parse_entries).unwrap_or_default();
    let deleted = it
        .next()
        .and_then(items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(id_of)
        .collect();
    AutoClaim {
        next,
        claimed,
        deleted,
    }
}

/// One row of the extended `XPENDING` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    /// Entry id.
    pub id: EntryId,
    /// Consumer that holds it.
    pub consumer: Vec<u8>,
    /// Milliseconds since its last delivery.
    pub idle_ms: u64,
    /// How often it was delivered.
    pub deliveries: u64,
}

fn int(v: Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(i).ok(),
        other => bytes(other).and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok()),
    }
}

/// Parses the extended `XPENDING key group [IDLE ms] start end count [consumer]` reply.
pub fn parse_pending(v: Value) -> Vec<PendingRow> {
    items(v)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|row| {
            let mut it = items(row)?.into_iter();
            Some(PendingRow {
                id: id_of(it.next()?)?,
                consumer: bytes(it.next()?)?,
                idle_ms: int(it.next()?)?,
                deliveries: int(it.next()?)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &str, fields: &[&[u8]]) -> Value {
        Value::Array(vec![
            bs(id.as_bytes()),
            Value::Array(fields.iter().map(|f| bs(f)).collect()),
        ])
    }

    #[test]
    fn one_bad_entry_does_not_poison_the_batch() {
        let reply = Value::Array(vec![Value::Array(vec![
            bs(b"s"),
            Value::Array(vec![
                entry("1-0", &[b"a", b"1"]),
                entry("2-0", &[b"\xff\xfe", b"v\x01\x02"]),
                Value::Array(vec![bs(b"3-0"), Value::Nil]),
                entry("4-0", &[b"odd"]),
                entry("5-0", &[b"f", b"a", b"f", b"b"]),
            ]),
        ])]);
        let got = parse_read_reply(reply);
        assert_eq!(got.len(), 5);
        assert!(
            matches!(&got[0], ReadItem::Entry(e) if e.fields == vec![(b"a".to_vec(), b"1".to_vec())])
        );
        assert!(matches!(&got[1], ReadItem::Entry(e) if e.fields[0].0 == b"\xff\xfe"));
        assert_eq!(got[2], ReadItem::Tombstone(EntryId::new(3, 0)));
        assert!(
            matches!(&got[3], ReadItem::Malformed { id: Some(id), .. } if *id == EntryId::new(4, 0))
        );
        assert!(matches!(&got[4], ReadItem::Entry(e) if e.fields.len() == 2));
    }

    #[test]
    fn resp3_map_and_nil() {
        assert!(parse_read_reply(Value::Nil).is_empty());
        let reply = Value::Map(vec![(
            bs(b"s"),
            Value::Array(vec![entry("7-1", &[b"k", b"v"])]),
        )]);
        assert_eq!(parse_read_reply(reply)[0].id(), Some(EntryId::new(7, 1)));
    }

    #[test]
    fn autoclaim_reply() {
        let reply = Value::Array(vec![
            bs(b"0-0"),
            Value::Array(vec![entry("1-0", &[b"a", b"b"])]),
            Value::Array(vec![bs(b"2-0")]),
        ]);
        let r = parse_autoclaim(reply);
        assert_eq!(r.next, EntryId::MIN);
        assert_eq!(r.claimed.len(), 1);
        assert_eq!(r.deleted, vec![EntryId::new(2, 0)]);
    }

    #[test]
    fn arbitrary_values_never_panic() {
        let samples = vec![
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![])]),
            Value::Array(vec![Value::Array(vec![bs(b"s"), Value::Int(5)])]),
            Value::Array(vec![Value::Array(vec![
                bs(b"s"),
                Value::Array(vec![Value::Nil, Value::Double(1.0)]),
            ])]),
            Value::Boolean(true),
        ];
        for s in samples {
            let _ = parse_read_reply(s.clone());
            let _ = parse_autoclaim(s.clone());
            let _ = parse_pending(s);
        }
    }
}
