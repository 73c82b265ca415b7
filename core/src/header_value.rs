//! A header's value: text, bytes, or one of the typed values brokers carry.

use std::fmt;

use bytes::Bytes;

/// One header value.
///
/// Most headers are text, and every broker carries text exactly. The other forms exist so that
/// what a broker carries typed (AMQP field-table values) or as raw bytes (Kafka header values,
/// SQS `Binary` attributes) reaches the application as it was written, and goes back out the
/// same way. Which backend carries which form is in `docs/wire/`; a backend that cannot carry a
/// form refuses the send with a typed error naming the header, it never converts silently.
///
/// Floating-point values compare by their bits, so that a value equals itself after a round
/// trip (a NaN included) and `Eq` holds.
#[derive(Clone)]
#[non_exhaustive]
pub enum HeaderValue {
    /// UTF-8 text (AMQP long or short string, Kafka bytes that are UTF-8, SQS `String`).
    Text(String),
    /// Raw bytes (AMQP byte array, Kafka bytes that are not UTF-8, SQS `Binary`).
    Bytes(Bytes),
    /// No value (AMQP void, a Kafka header whose value is null).
    Null,
    /// AMQP boolean.
    Bool(bool),
    /// AMQP short-short-int.
    I8(i8),
    /// AMQP short-short-uint.
    U8(u8),
    /// AMQP short-int.
    I16(i16),
    /// AMQP short-uint.
    U16(u16),
    /// AMQP long-int.
    I32(i32),
    /// AMQP long-uint.
    U32(u32),
    /// AMQP long-long-int.
    I64(i64),
    /// AMQP float.
    F32(f32),
    /// AMQP double.
    F64(f64),
    /// AMQP decimal: `value` × 10^-`scale`.
    Decimal {
        /// Digits after the decimal point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// AMQP timestamp: seconds since the Unix epoch.
    TimestampSecs(u64),
    /// AMQP field array.
    Array(Vec<HeaderValue>),
    /// AMQP field table, its entries in the order they were read.
    Table(Vec<(String, HeaderValue)>),
}

/// Deepest nesting of arrays and tables accepted: deeper values are refused, so that no
/// recursive walk over a value (encode, compare, drop) can exhaust the stack.
pub const MAX_HEADER_VALUE_DEPTH: usize = 32;

impl HeaderValue {
    /// The text, if this is a text value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            HeaderValue::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The bytes of a text or bytes value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            HeaderValue::Text(t) => Some(t.as_bytes()),
            HeaderValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A value for bytes read off the wire: text if they are UTF-8, bytes otherwise.
    pub fn from_wire_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => HeaderValue::Text(text.to_owned()),
            Err(_) => HeaderValue::Bytes(Bytes::copy_from_slice(bytes)),
        }
    }

    /// The form's name, for errors that say which form a broker cannot carry.
    pub fn type_name(&self) -> &'static str {
        match self {
            HeaderValue::Text(_) => "text",
            HeaderValue::Bytes(_) => "bytes",
            HeaderValue::Null => "null",
            HeaderValue::Bool(_) => "bool",
            HeaderValue::I8(_) => "i8",
            HeaderValue::U8(_) => "u8",
            HeaderValue::I16(_) => "i16",
            HeaderValue::U16(_) => "u16",
            HeaderValue::I32(_) => "i32",
            HeaderValue::U32(_) => "u32",
            HeaderValue::I64(_) => "i64",
            HeaderValue::F32(_) => "f32",
            HeaderValue::F64(_) => "f64",
            HeaderValue::Decimal { .. } => "decimal",
            HeaderValue::TimestampSecs(_) => "timestamp",
            HeaderValue::Array(_) => "array",
            HeaderValue::Table(_) => "table",
        }
    }

    /// Bytes the value takes: text and bytes their length, scalars their width, arrays and
    /// tables the sum of their parts (table keys included).
    pub fn encoded_len(&self) -> usize {
        match self {
            HeaderValue::Text(t) => t.len(),
            HeaderValue::Bytes(b) => b.len(),
            HeaderValue::Null => 0,
            HeaderValue::Bool(_) | HeaderValue::I8(_) | HeaderValue::U8(_) => 1,
            HeaderValue::I16(_) | HeaderValue::U16(_) => 2,
            HeaderValue::I32(_) | HeaderValue::U32(_) | HeaderValue::F32(_) => 4,
            HeaderValue::Decimal { .. } => 5,
            HeaderValue::I64(_) | HeaderValue::F64(_) | HeaderValue::TimestampSecs(_) => 8,
            HeaderValue::Array(items) => items.iter().map(HeaderValue::encoded_len).sum(),
            HeaderValue::Table(entries) => {
                entries.iter().map(|(k, v)| k.len() + v.encoded_len()).sum()
            }
        }
    }

    /// How deeply arrays and tables nest (0 for a scalar, text or bytes).
    pub fn depth(&self) -> usize {
        match self {
            HeaderValue::Array(items) => {
                1 + items.iter().map(HeaderValue::depth).max().unwrap_or(0)
            }
            HeaderValue::Table(entries) => {
                1 + entries.iter().map(|(_, v)| v.depth()).max().unwrap_or(0)
            }
            _ => 0,
        }
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &Self) -> bool {
        use HeaderValue as V;
        match (self, other) {
            (V::Text(a), V::Text(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::Null, V::Null) => true,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U8(a), V::U8(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            (V::F32(a), V::F32(b)) => a.to_bits() == b.to_bits(),
            (V::F64(a), V::F64(b)) => a.to_bits() == b.to_bits(),
            (
                V::Decimal { scale, value },
                V::Decimal {
                    scale: s2,
                    value: v2,
                },
            ) => scale == s2 && value == v2,
            (V::TimestampSecs(a), V::TimestampSecs(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for HeaderValue {}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Text prints as the string it is, as header values always have.
            HeaderValue::Text(t) => fmt::Debug::fmt(t, f),
            HeaderValue::Bytes(b) => write!(f, "Bytes({b:?})"),
            HeaderValue::Null => f.write_str("Null"),
            HeaderValue::Bool(v) => write!(f, "Bool({v})"),
            HeaderValue::I8(v) => write!(f, "I8({v})"),
            HeaderValue::U8(v) => write!(f, "U8({v})"),
            HeaderValue::I16(v) => write!(f, "I16({v})"),
            HeaderValue::U16(v) => write!(f, "U16({v})"),
            HeaderValue::I32(v) => write!(f, "I32({v})"),
            HeaderValue::U32(v) => write!(f, "U32({v})"),
            HeaderValue::I64(v) => write!(f, "I64({v})"),
            HeaderValue::F32(v) => write!(f, "F32({v:?})"),
            HeaderValue::F64(v) => write!(f, "F64({v:?})"),
            HeaderValue::Decimal { scale, value } => write!(f, "Decimal({value}e-{scale})"),
            HeaderValue::TimestampSecs(v) => write!(f, "TimestampSecs({v})"),
            HeaderValue::Array(items) => f.debug_list().entries(items).finish(),
            HeaderValue::Table(entries) => f
                .debug_map()
                .entries(entries.iter().map(|(k, v)| (k, v)))
                .finish(),
        }
    }
}

impl From<String> for HeaderValue {
    fn from(v: String) -> Self {
        HeaderValue::Text(v)
    }
}

impl From<&str> for HeaderValue {
    fn from(v: &str) -> Self {
        HeaderValue::Text(v.to_owned())
    }
}

impl From<Bytes> for HeaderValue {
    fn from(v: Bytes) -> Self {
        HeaderValue::Bytes(v)
    }
}

impl From<Vec<u8>> for HeaderValue {
    fn from(v: Vec<u8>) -> Self {
        HeaderValue::Bytes(Bytes::from(v))
    }
}

impl From<&[u8]> for HeaderValue {
    fn from(v: &[u8]) -> Self {
        HeaderValue::Bytes(Bytes::copy_from_slice(v))
    }
}

macro_rules! from_scalar {
    ($($t:ty => $variant:ident),*) => {
        $(impl From<$t> for HeaderValue {
            fn from(v: $t) -> Self {
                HeaderValue::$variant(v)
            }
        })*
    };
}

from_scalar!(bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32,
    u32 => U32, i64 => I64, f32 => F32, f64 => F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_compare_by_bits_and_forms_never_equal_each_other() {
        assert_eq!(HeaderValue::F64(f64::NAN), HeaderValue::F64(f64::NAN));
        assert_ne!(HeaderValue::F32(0.0), HeaderValue::F32(-0.0));
        assert_ne!(HeaderValue::I32(1), HeaderValue::I64(1));
        assert_ne!(
            HeaderValue::Text("a".into()),
            HeaderValue::Bytes(Bytes::from_static(b"a"))
        );
    }

    #[test]
    fn wire_bytes_are_text_only_when_utf8() {
        assert_eq!(HeaderValue::from_wire_bytes(b"ok"), HeaderValue::from("ok"));
        assert_eq!(
            HeaderValue::from_wire_bytes(b"\xff\x00"),
            HeaderValue::Bytes(Bytes::from_static(b"\xff\x00"))
        );
    }

    #[test]
    fn length_and_depth_count_nested_parts() {
        let v = HeaderValue::Table(vec![(
            "k".into(),
            HeaderValue::Array(vec![HeaderValue::I64(1), "ab".into()]),
        )]);
        assert_eq!(v.encoded_len(), 1 + 8 + 2);
        assert_eq!(v.depth(), 2);
        assert_eq!(format!("{v:?}"), r#"{"k": [I64(1), "ab"]}"#);
    }
}
