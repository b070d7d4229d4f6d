//! Tolerant readers for `redis::Value` replies (XINFO, SCAN, XPENDING summaries) in RESP2 or RESP3
//! form. Nothing here panics: a missing or odd field reads as `None`.

use millrace::EntryId;
use redis::Value;

/// The bytes of a string-like value.
pub(crate) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

/// A string-like value as text (lossy for invalid UTF-8).
pub(crate) fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A non-negative integer, sent as an integer or as digits.
pub(crate) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Double(d) if *d >= 0.0 && d.fract() == 0.0 => Some(*d as u64),
        other => text(other).and_then(|t| t.trim().parse().ok()),
    }
}

/// An entry id.
pub(crate) fn id(v: &Value) -> Option<EntryId> {
    bytes(v).and_then(|b| EntryId::from_bytes(&b))
}

/// The elements of an array-like value; `Nil` is empty; anything else is empty too.
pub(crate) fn list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => Vec::new(),
    }
}

/// The elements of an array-like value, by reference.
pub(crate) fn list_ref(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// A reply of named fields: a RESP3 map or a RESP2 flat `[name, value, name, value, ...]` array.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields(Vec<(String, Value)>);

impl Fields {
    /// Reads named fields; an odd trailing element is ignored.
    pub(crate) fn from_value(v: Value) -> Fields {
        let pairs = match v {
            Value::Map(m) => m
                .into_iter()
                .filter_map(|(k, v)| Some((text(&k)?, v)))
                .collect(),
            other => {
                let mut out = Vec::new();
                let mut it = list(other).into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if let Some(k) = text(&k) {
                        out.push((k, v));
                    }
                }
                out
            }
        };
        Fields(pairs)
    }

    /// The value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The value of `name` as an integer (`None` when missing or nil).
    pub(crate) fn int(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(int)
    }

    /// The value of `name` as an entry id.
    pub(crate) fn id(&self, name: &str) -> Option<EntryId> {
        self.get(name).and_then(id)
    }

    /// The value of `name` as bytes.
    pub(crate) fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.get(name).and_then(bytes)
    }

    /// The id of an entry-valued field (`first-entry`, `last-entry`: `[id, fields]` or nil).
    pub(crate) fn entry_id(&self, name: &str) -> Option<EntryId> {
        self.get(name)
            .and_then(|v| list_ref(v).first())
            .and_then(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn resp2_and_resp3_fields_read_the_same() {
        let resp2 = Value::Array(vec![
            bs("name"),
            bs("g"),
            bs("lag"),
            Value::Nil,
            bs("pending"),
            Value::Int(3),
        ]);
        let resp3 = Value::Map(vec![
            (bs("name"), bs("g")),
            (bs("lag"), Value::Nil),
            (bs("pending"), Value::Int(3)),
        ]);
        for v in [resp2, resp3] {
            let f = Fields::from_value(v);
            assert_eq!(f.bytes("name"), Some(b"g".to_vec()));
            assert_eq!(f.int("lag"), None);
            assert_eq!(f.int("pending"), Some(3));
            assert_eq!(f.int("missing"), None);
        }
    }

    #[test]
    fn odd_values_read_as_none() {
        let f = Fields::from_value(Value::Int(5));
        assert!(f.get("x").is_none());
        let f = Fields::from_value(Value::Array(vec![bs("first-entry"), Value::Nil, bs("odd")]));
        assert_eq!(f.entry_id("first-entry"), None);
        assert_eq!(int(&bs("-3")), None);
        assert_eq!(id(&bs("12-3")), Some(EntryId::new(12, 3)));
    }
}
