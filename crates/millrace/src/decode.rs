//! Decoding stream entries into handler messages: a serde deserializer over field/value byte pairs.
//!
//! Redis stores every value as a byte string, so numbers and booleans are parsed from their text
//! (`"29.99"` becomes `29.99_f64`), `Option` fields may be missing, and unknown fields are ignored
//! (or collected with `#[serde(flatten)]`).
//!
//! The trace-context fields a [`Producer`](crate::producer::Producer) writes (`traceparent`,
//! `tracestate`) are stripped before a message type sees the entry, so `deny_unknown_fields` and
//! flattened maps never meet them; a [`RawEntry`] keeps every field.

use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, MapAccess, Visitor};

use crate::entry::RawEntry;

/// Why an entry could not be decoded into the handler's message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    field: Option<String>,
    message: String,
}

impl DecodeError {
    /// An error about the entry as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        DecodeError {
            field: None,
            message: message.into(),
        }
    }

    /// An error about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        DecodeError {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The field the error concerns, when it concerns one.
    pub fn field_name(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError::new(msg.to_string())
    }
}

/// A message type a handler can receive: built from one raw stream entry.
///
/// Every `serde::Deserialize` type implements it through [`from_fields`], without the
/// trace-context fields; [`RawEntry`] implements it by handing the entry over untouched.
pub trait Decode: Sized + Send + 'static {
    /// Decodes `raw`. On failure the raw entry is handed back so it can be dead-lettered as it was.
    fn decode(raw: RawEntry) -> Result<Self, (RawEntry, DecodeError)>;
}

impl<T: DeserializeOwned + Send + 'static> Decode for T {
    fn decode(raw: RawEntry) -> Result<Self, (RawEntry, DecodeError)> {
        let fields = FieldsDeserializer {
            fields: &raw.fields,
            skip_trace: true,
        };
        match T::deserialize(fields) {
            Ok(v) => Ok(v),
            Err(e) => Err((raw, e)),
        }
    }
}

impl Decode for RawEntry {
    fn decode(raw: RawEntry) -> Result<Self, (RawEntry, DecodeError)> {
        Ok(raw)
    }
}

/// Deserializes a value from stream field/value pairs.
///
/// ```
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64, price: f64, gift: Option<bool>, note: Option<String> }
///
/// let fields = vec![
///     (b"id".to_vec(), b"7".to_vec()),
///     (b"price".to_vec(), b"29.99".to_vec()),
///     (b"gift".to_vec(), b"true".to_vec()),
///     (b"extra".to_vec(), b"ignored".to_vec()),
/// ];
/// let order: Order = millrace::decode::from_fields(&fields).unwrap();
/// assert_eq!(order, Order { id: 7, price: 29.99, gift: Some(true), note: None });
/// ```
pub fn from_fields<T: DeserializeOwned>(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<T, DecodeError> {
    T::deserialize(FieldsDeserializer {
        fields,
        skip_trace: false,
    })
}

struct FieldsDeserializer<'a> {
    fields: &'a [(Vec<u8>, Vec<u8>)],
    /// Leave out `traceparent` and `tracestate`.
    skip_trace: bool,
}

impl<'de> de::Deserializer<'de> for FieldsDeserializer<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_map(FieldsAccess {
            iter: self.fields.iter(),
            value: None,
            key: None,
            skip_trace: self.skip_trace,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct FieldsAccess<'a> {
    iter: std::slice::Iter<'a, (Vec<u8>, Vec<u8>)>,
    value: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    skip_trace: bool,
}

impl<'de> MapAccess<'de> for FieldsAccess<'_> {
    type Error = DecodeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let next = if self.skip_trace {
            self.iter
                .by_ref()
                .find(|(k, _)| !crate::trace::is_trace_field(k))
        } else {
            self.iter.next()
        };
        match next {
            Some((k, v)) => {
                self.value = Some(v);
                self.key = Some(k);
                seed.deserialize(Text(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let value = self.value.take().unwrap_or_default();
        seed.deserialize(Text(value)).map_err(|mut e| {
            if e.field.is_none() {
                e.field = self.key.map(|k| String::from_utf8_lossy(k).into_owned());
            }
            e
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// One byte string (a field name or a value), parsed according to the type asked for.
struct Text<'a>(&'a [u8]);

impl<'a> Text<'a> {
    fn utf8(&self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.0).map_err(|_| DecodeError::new("value is not valid UTF-8"))
    }

    fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, DecodeError> {
        let text = self.utf8()?;
        text.trim().parse().map_err(|_| {
            let shown: String = text.chars().take(40).collect();
            DecodeError::new(format!("`{shown}` is not {what}"))
        })
    }
}

macro_rules! parse_number {
    ($($method:ident => $visit:ident : $ty:ty, $what:expr;)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.$visit(self.parse::<$ty>($what)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Text<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match std::str::from_utf8(self.0) {
            Ok(s) => visitor.visit_str(s),
            Err(_) => visitor.visit_bytes(self.0),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.utf8()?.trim() {
            "true" | "TRUE" | "True" | "1" | "yes" => visitor.visit_bool(true),
            "false" | "FALSE" | "False" | "0" | "no" => visitor.visit_bool(false),
            other => Err(DecodeError::new(format!(
                "`{other}` is not a boolean (true/false/1/0)"
            ))),
        }
    }

    parse_number! {
        deserialize_i8 => visit_i8: i8, "an integer in i8 range";
        deserialize_i16 => visit_i16: i16, "an integer in i16 range";
        deserialize_i32 => visit_i32: i32, "an integer in i32 range";
        deserialize_i64 => visit_i64: i64, "an integer in i64 range";
        deserialize_i128 => visit_i128: i128, "an integer in i128 range";
        deserialize_u8 => visit_u8: u8, "an integer in u8 range";
        deserialize_u16 => visit_u16: u16, "an integer in u16 range";
        deserialize_u32 => visit_u32: u32, "an integer in u32 range";
        deserialize_u64 => visit_u64: u64, "an integer in u64 range";
        deserialize_u128 => visit_u128: u128, "an integer in u128 range";
        deserialize_f32 => visit_f32: f32, "a number";
        deserialize_f64 => visit_f64: f64, "a number";
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let s = self.utf8()?;
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(DecodeError::new(format!("`{s}` is not a single character"))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_str(self.utf8()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_str(self.utf8()?)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_bytes(self.0)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_byte_buf(self.0.to_vec())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let s = self.utf8()?;
        visitor.visit_enum(s.into_deserializer())
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::new("a stream value is a single byte string; decode lists yourself (use RawEntry or a String field)"))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let _ = len;
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::new("a stream value is a single byte string, not a map; decode nested data yourself (use RawEntry or a String field)"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_map(visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn f(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Click,
        View,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Event {
        user_id: u32,
        kind: Kind,
        score: f64,
        ok: bool,
        note: Option<String>,
        #[serde(flatten)]
        rest: HashMap<String, String>,
    }

    #[test]
    fn numbers_bools_enums_and_flatten() {
        let e: Event = from_fields(&f(&[
            ("user_id", "42"),
            ("kind", "click"),
            ("score", "1.5"),
            ("ok", "1"),
            ("extra", "x"),
        ]))
        .unwrap();
        assert_eq!(e.user_id, 42);
        assert_eq!(e.kind, Kind::Click);
        assert_eq!(e.score, 1.5);
        assert!(e.ok);
        assert_eq!(e.note, None);
        assert_eq!(e.rest.get("extra").map(String::as_str), Some("x"));
        let _ = Kind::View;
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Qty {
        quantity: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let err = from_fields::<Qty>(&f(&[("quantity", "lots")])).unwrap_err();
        assert_eq!(err.field_name(), Some("quantity"));
        assert!(
            err.to_string().contains("`lots` is not an integer"),
            "{err}"
        );
        let err = from_fields::<Qty>(&f(&[("other", "1")])).unwrap_err();
        assert!(
            err.to_string().contains("missing field `quantity`"),
            "{err}"
        );
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        quantity: u32,
    }

    #[test]
    fn trace_fields_never_reach_a_message_type_but_stay_in_a_raw_entry() {
        let fields = f(&[
            ("quantity", "3"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "k=v"),
        ]);
        let raw = RawEntry::new(crate::entry::EntryId::new(1, 0), fields.clone());
        let strict = <Strict as Decode>::decode(raw.clone()).unwrap();
        assert_eq!(strict, Strict { quantity: 3 });
        let rest = <HashMap<String, String> as Decode>::decode(raw.clone()).unwrap();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(<RawEntry as Decode>::decode(raw).unwrap().fields, fields);
        // `from_fields` itself is plain serde over every field.
        assert!(from_fields::<Strict>(&fields).is_err());
    }

    #[test]
    fn non_utf8_values_fail_cleanly() {
        let fields = vec![(b"quantity".to_vec(), vec![0xff, 0xfe])];
        let err = from_fields::<Qty>(&fields).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
        // A binary field name is just an unknown field.
        let fields = vec![
            (vec![0xff], b"1".to_vec()),
            (b"quantity".to_vec(), b"3".to_vec()),
        ];
        assert_eq!(from_fields::<Qty>(&fields).unwrap().quantity, 3);
    }
}
