//! Encoding messages into stream fields: a serde serializer that is the mirror of
//! [`decode::from_fields`](crate::decode::from_fields), so what a [`Producer`](super::Producer)
//! writes a consumer of the same type decodes.
//!
//! A message is a struct or a map whose values are scalars: strings and bytes as they are, numbers
//! and booleans as their text (`29.99`, `true`), unit enum variants by name, `None` by leaving the
//! field out. Nested structs, maps and lists are refused with an error naming the field: a stream
//! value is one byte string (encode such data yourself, for example as JSON in a `String` field).

use std::fmt;

use serde::ser::{self, Impossible, Serialize};

/// One entry's field/value pairs, in order (as in [`RawEntry::fields`](crate::RawEntry::fields)).
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Why a message could not be encoded as stream fields; names the field when it concerns one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        EncodeError(msg.to_string())
    }
}

/// Serializes `message` (a struct or a map of scalars) into field/value pairs.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64, price: f64, gift: Option<bool>, note: Option<String> }
///
/// let order = Order { id: 7, price: 29.99, gift: Some(true), note: None };
/// let fields = millrace::producer::to_fields(&order).unwrap();
/// assert_eq!(fields[0], (b"id".to_vec(), b"7".to_vec()));
/// assert_eq!(fields.len(), 3); // `note` is None: left out
/// let back: Order = millrace::decode::from_fields(&fields).unwrap();
/// assert_eq!(back, order);
/// ```
pub fn to_fields<T: Serialize + ?Sized>(message: &T) -> Result<Fields, EncodeError> {
    let mut fields = Vec::new();
    message.serialize(Top(&mut fields))?;
    if fields.is_empty() {
        return Err(EncodeError(
            "the message has no fields (every field is None, or it is empty): Redis refuses an entry without fields".into(),
        ));
    }
    Ok(fields)
}

const NOT_A_RECORD: &str = "a message must be a struct or a map of fields (a stream entry is field/value pairs); wrap the value in a struct";

/// The top level: a struct or a map, each field becoming one pair.
struct Top<'a>(&'a mut Fields);

/// Serializer methods that refuse their kind of value with `$why`.
macro_rules! refuse {
    ($why:expr; $($method:ident($($arg:ty),*) -> $ok:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ok, EncodeError> {
            Err(EncodeError($why.into()))
        })*
    };
}

/// The serializer methods of the compound kinds neither level takes (lists, tuples, variants with
/// data), refusing with `$why`.
macro_rules! refuse_compound {
    ($why:expr) => {
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, EncodeError> {
            Err(EncodeError($why.into()))
        }

        refuse! { $why;
            serialize_seq(Option<usize>) -> Self::SerializeSeq;
            serialize_tuple(usize) -> Self::SerializeTuple;
            serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
            serialize_tuple_variant(&'static str, u32, &'static str, usize)
                -> Self::SerializeTupleVariant;
            serialize_struct_variant(&'static str, u32, &'static str, usize)
                -> Self::SerializeStructVariant;
        }
    };
}

/// `Some(v)` and a newtype struct are serialized as `v`.
macro_rules! see_through {
    () => {
        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Self::Ok, EncodeError> {
            value.serialize(self)
        }

        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<Self::Ok, EncodeError> {
            value.serialize(self)
        }
    };
}

impl<'a> ser::Serializer for Top<'a> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Impossible<(), EncodeError>;
    type SerializeTuple = Impossible<(), EncodeError>;
    type SerializeTupleStruct = Impossible<(), EncodeError>;
    type SerializeTupleVariant = Impossible<(), EncodeError>;
    type SerializeMap = Record<'a>;
    type SerializeStruct = Record<'a>;
    type SerializeStructVariant = Impossible<(), EncodeError>;

    refuse! { NOT_A_RECORD;
        serialize_bool(bool) -> (); serialize_i8(i8) -> (); serialize_i16(i16) -> ();
        serialize_i32(i32) -> (); serialize_i64(i64) -> (); serialize_u8(u8) -> ();
        serialize_u16(u16) -> (); serialize_u32(u32) -> (); serialize_u64(u64) -> ();
        serialize_f32(f32) -> (); serialize_f64(f64) -> (); serialize_char(char) -> ();
        serialize_str(&str) -> (); serialize_bytes(&[u8]) -> (); serialize_none() -> ();
        serialize_unit() -> (); serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
    }
    refuse_compound!(NOT_A_RECORD);
    see_through!();

    fn serialize_map(self, _: Option<usize>) -> Result<Record<'a>, EncodeError> {
        Ok(Record {
            fields: self.0,
            key: None,
        })
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Record<'a>, EncodeError> {
        self.serialize_map(None)
    }
}

/// The fields of one message.
struct Record<'a> {
    fields: &'a mut Fields,
    /// A map's key, waiting for its value.
    key: Option<Vec<u8>>,
}

impl Record<'_> {
    fn push(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(value) = value {
            self.fields.push((key, value));
        }
    }
}

impl ser::SerializeStruct for Record<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        let value = value.serialize(Scalar).map_err(|e| in_field(key, e))?;
        self.push(key.as_bytes().to_vec(), value);
        Ok(())
    }

    fn end(self) -> Result<(), EncodeError> {
        Ok(())
    }
}

impl ser::SerializeMap for Record<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        match key.serialize(Scalar)? {
            Some(key) => self.key = Some(key),
            None => return Err(EncodeError("a map key is None".into())),
        }
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let key = self.key.take().unwrap_or_default();
        let value = value
            .serialize(Scalar)
            .map_err(|e| in_field(&String::from_utf8_lossy(&key), e))?;
        self.push(key, value);
        Ok(())
    }

    fn end(self) -> Result<(), EncodeError> {
        Ok(())
    }
}

fn in_field(field: &str, e: EncodeError) -> EncodeError {
    EncodeError(format!("field `{field}`: {}", e.0))
}

const NOT_A_SCALAR: &str = "a stream value is a single byte string, not a list, map or struct; encode nested data yourself (for example as JSON in a String field)";

/// One value: its bytes, or `None` to leave the field out.
struct Scalar;

macro_rules! as_text {
    ($($method:ident($ty:ty);)*) => {
        $(fn $method(self, v: $ty) -> Result<Option<Vec<u8>>, EncodeError> {
            Ok(Some(v.to_string().into_bytes()))
        })*
    };
}

impl ser::Serializer for Scalar {
    type Ok = Option<Vec<u8>>;
    type Error = EncodeError;
    type SerializeSeq = Impossible<Self::Ok, EncodeError>;
    type SerializeTuple = Impossible<Self::Ok, EncodeError>;
    type SerializeTupleStruct = Impossible<Self::Ok, EncodeError>;
    type SerializeTupleVariant = Impossible<Self::Ok, EncodeError>;
    type SerializeMap = Impossible<Self::Ok, EncodeError>;
    type SerializeStruct = Impossible<Self::Ok, EncodeError>;
    type SerializeStructVariant = Impossible<Self::Ok, EncodeError>;

    as_text! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str);
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Self::Ok, EncodeError> {
        Ok(Some(v.to_vec()))
    }

    fn serialize_none(self) -> Result<Self::Ok, EncodeError> {
        Ok(None)
    }

    fn serialize_unit(self) -> Result<Self::Ok, EncodeError> {
        Ok(Some(Vec::new()))
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<Self::Ok, EncodeError> {
        Ok(Some(Vec::new()))
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Self::Ok, EncodeError> {
        Ok(Some(variant.as_bytes().to_vec()))
    }

    refuse! { NOT_A_SCALAR;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }
    refuse_compound!(NOT_A_SCALAR);
    see_through!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Click,
        View,
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Event {
        user_id: u32,
        kind: Kind,
        score: f64,
        ok: bool,
        note: Option<String>,
        big: i128,
        letter: char,
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        let event = Event {
            user_id: 42,
            kind: Kind::View,
            score: 0.1 + 0.2,
            ok: false,
            note: Some("a b".into()),
            big: -170_141_183_460_469_231_731_687_303_715_884_105_728,
            letter: 'é',
        };
        let fields = to_fields(&event).unwrap();
        let back: Event = crate::decode::from_fields(&fields).unwrap();
        assert_eq!(back, event);
        let _ = Kind::Click;
    }

    #[test]
    fn maps_are_messages_and_none_is_left_out() {
        let mut map = BTreeMap::new();
        map.insert("a", Some(1));
        map.insert("b", None);
        let fields = to_fields(&map).unwrap();
        assert_eq!(fields, vec![(b"a".to_vec(), b"1".to_vec())]);
        assert!(to_fields(&BTreeMap::<String, Option<u8>>::new())
            .unwrap_err()
            .to_string()
            .contains("no fields"));
    }

    #[derive(serde::Serialize)]
    struct Nested {
        items: Vec<u32>,
    }

    #[test]
    fn nested_values_and_bare_scalars_are_refused_with_the_field() {
        let err = to_fields(&Nested { items: vec![1] }).unwrap_err();
        assert!(err.to_string().starts_with("field `items`:"), "{err}");
        assert!(err.to_string().contains("JSON"), "{err}");
        let err = to_fields(&5u32).unwrap_err();
        assert!(err.to_string().contains("struct or a map"), "{err}");
    }

    #[derive(serde::Serialize)]
    enum Shape {
        Point(u8),
        Pair(u8, u8),
        Named { x: u8 },
    }

    #[test]
    fn every_compound_kind_is_refused_at_both_levels() {
        let top = [
            to_fields(&vec![1u8]),
            to_fields(&(1u8, 2u8)),
            to_fields(&Shape::Point(1)),
            to_fields(&Shape::Pair(1, 2)),
            to_fields(&Shape::Named { x: 1 }),
        ];
        for err in top {
            let err = err.unwrap_err().to_string();
            assert!(err.contains("struct or a map"), "{err}");
        }
        let mut map = BTreeMap::new();
        map.insert("t", (1u8, 2u8));
        let mut nested = BTreeMap::new();
        nested.insert("m", BTreeMap::from([("a", 1u8)]));
        let mut shapes = BTreeMap::new();
        shapes.insert("s", Shape::Named { x: 1 });
        let mut points = BTreeMap::new();
        points.insert("p", Shape::Point(1));
        for err in [
            to_fields(&map),
            to_fields(&nested),
            to_fields(&shapes),
            to_fields(&points),
        ] {
            let err = err.unwrap_err().to_string();
            assert!(err.starts_with("field `") && err.contains("JSON"), "{err}");
        }
        let _ = Shape::Pair(0, 0);
    }
}
