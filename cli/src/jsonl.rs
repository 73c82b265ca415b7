//! The one-JSON-object-per-line shape `consume --format json` writes and `produce --from-json`
//! reads, so that `consume | produce` moves messages between brokers byte-exactly.
//!
//! ```json
//! {"id":"…","timestamp":1700000000000,"key":"k","headers":{"a":"1"},"payload":"text",
//!  "source":"orders","attempt":1,"redelivered":false,"partition":0,"offset":41}
//! ```
//!
//! `payload` is the payload itself when it is valid UTF-8; otherwise it is its standard base64
//! (with padding) and `"encoding": "base64"` says so; `key` and `"key_encoding"` likewise.
//! `headers` keeps the message's header order (written and read in document order). A text
//! value is a JSON string; a value of another form is an object with one member naming the
//! form: `{"bytes":"<base64>"}`, `{"null":null}`, `{"bool":true}`, `{"i8":-1}` (and `u8`,
//! `i16`, `u16`, `i32`, `u32`, `i64`), `{"f32":"0.5"}` / `{"f64":"1e300"}` (text, so that NaN
//! and infinities survive), `{"decimal":{"scale":2,"value":12345}}`, `{"timestamp":1700000000}`
//! (seconds), `{"array":[…]}` and `{"table":[["name",…],…]}`. When a header name repeats, as
//! Kafka allows, `headers` is an array of `[name, value]` pairs instead of an object. Lines
//! written before these forms existed read as they always did. `timestamp` is milliseconds since the Unix epoch, or
//! null. `source`, `attempt`, `redelivered`, `partition` and `offset` describe the delivery;
//! `produce` accepts and ignores them, since a new send is a first attempt at a new position.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use mailroom::{DeliveryInfo, HeaderValue, Message, Timestamp};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The `encoding` value of a payload written as base64.
pub(crate) const BASE64: &str = "base64";

/// A payload as text when it is valid UTF-8, else as base64; the second part is the encoding
/// name to print beside it (`None` for text).
pub(crate) fn payload_text(payload: &[u8]) -> (Cow<'_, str>, Option<&'static str>) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Cow::Borrowed(text), None),
        Err(_) => (Cow::Owned(B64.encode(payload)), Some(BASE64)),
    }
}

/// The `encoding` of a key written as base64.
fn key_text(key: &[u8]) -> (Cow<'_, str>, Option<&'static str>) {
    payload_text(key)
}

/// A header value as JSON: text as a string, other forms as `{"<form>": …}`.
fn value_to_json(value: &HeaderValue) -> serde_json::Value {
    use serde_json::{json, Value};
    let (form, inner) = match value {
        HeaderValue::Text(t) => return Value::String(t.clone()),
        HeaderValue::Bytes(b) => ("bytes", Value::String(B64.encode(b))),
        HeaderValue::Null => ("null", Value::Null),
        HeaderValue::Bool(v) => ("bool", json!(v)),
        HeaderValue::I8(v) => ("i8", json!(v)),
        HeaderValue::U8(v) => ("u8", json!(v)),
        HeaderValue::I16(v) => ("i16", json!(v)),
        HeaderValue::U16(v) => ("u16", json!(v)),
        HeaderValue::I32(v) => ("i32", json!(v)),
        HeaderValue::U32(v) => ("u32", json!(v)),
        HeaderValue::I64(v) => ("i64", json!(v)),
        HeaderValue::F32(v) => ("f32", Value::String(format!("{v:?}"))),
        HeaderValue::F64(v) => ("f64", Value::String(format!("{v:?}"))),
        HeaderValue::Decimal { scale, value } => {
            ("decimal", json!({"scale": scale, "value": value}))
        }
        HeaderValue::TimestampSecs(v) => ("timestamp", json!(v)),
        HeaderValue::Array(items) => (
            "array",
            Value::Array(items.iter().map(value_to_json).collect()),
        ),
        HeaderValue::Table(entries) => (
            "table",
            Value::Array(
                entries
                    .iter()
                    .map(|(k, v)| json!([k, value_to_json(v)]))
                    .collect(),
            ),
        ),
        // A form newer than this writer: refusing is better than writing it as something else.
        other => ("unknown", Value::String(other.type_name().to_owned())),
    };
    let mut object = serde_json::Map::new();
    object.insert(form.to_owned(), inner);
    Value::Object(object)
}

/// A header value from JSON (the inverse of [`value_to_json`]).
fn value_from_json(name: &str, json: serde_json::Value) -> Result<HeaderValue, String> {
    use serde_json::Value;
    let bad = |why: &str| format!("header {name:?}: {why}");
    let object = match json {
        Value::String(t) => return Ok(HeaderValue::Text(t)),
        Value::Object(o) if o.len() == 1 => o,
        _ => {
            return Err(bad(
                "expected a string or a typed value object such as {\"bytes\":\"<base64>\"}",
            ))
        }
    };
    let Some((form, inner)) = object.into_iter().next() else {
        return Err(bad("empty typed value object"));
    };
    fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Option<T> {
        v.as_i64()
            .and_then(|n| T::try_from(n).ok())
            .or_else(|| v.as_u64().and_then(|n| T::try_from(n).ok()))
    }
    let out_of_range = || bad(&format!("{form:?} value {inner} is not of that type"));
    Ok(match form.as_str() {
        "bytes" => HeaderValue::Bytes(
            B64.decode(inner.as_str().ok_or_else(out_of_range)?)
                .map_err(|e| bad(&format!("\"bytes\" is not valid base64: {e}")))?
                .into(),
        ),
        "null" if inner.is_null() => HeaderValue::Null,
        "bool" => HeaderValue::Bool(inner.as_bool().ok_or_else(out_of_range)?),
        "i8" => HeaderValue::I8(int(&inner).ok_or_else(out_of_range)?),
        "u8" => HeaderValue::U8(int(&inner).ok_or_else(out_of_range)?),
        "i16" => HeaderValue::I16(int(&inner).ok_or_else(out_of_range)?),
        "u16" => HeaderValue::U16(int(&inner).ok_or_else(out_of_range)?),
        "i32" => HeaderValue::I32(int(&inner).ok_or_else(out_of_range)?),
        "u32" => HeaderValue::U32(int(&inner).ok_or_else(out_of_range)?),
        "i64" => HeaderValue::I64(int(&inner).ok_or_else(out_of_range)?),
        "f32" => HeaderValue::F32(
            inner
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(out_of_range)?,
        ),
        "f64" => HeaderValue::F64(
            inner
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(out_of_range)?,
        ),
        "decimal" => HeaderValue::Decimal {
            scale: int(&inner["scale"]).ok_or_else(out_of_range)?,
            value: int(&inner["value"]).ok_or_else(out_of_range)?,
        },
        "timestamp" => HeaderValue::TimestampSecs(inner.as_u64().ok_or_else(out_of_range)?),
        "array" => match inner {
            Value::Array(items) => HeaderValue::Array(
                items
                    .into_iter()
                    .map(|v| value_from_json(name, v))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(out_of_range()),
        },
        "table" => match inner {
            Value::Array(entries) => {
                let mut table = Vec::with_capacity(entries.len());
                for entry in entries {
                    let Value::Array(mut pair) = entry else {
                        return Err(bad("a table entry is not a [name, value] pair"));
                    };
                    let (Some(v), Some(Value::String(k)), true) =
                        (pair.pop(), pair.pop(), pair.is_empty())
                    else {
                        return Err(bad("a table entry is not a [name, value] pair"));
                    };
                    table.push((k, value_from_json(name, v)?));
                }
                HeaderValue::Table(table)
            }
            _ => return Err(out_of_range()),
        },
        other => return Err(bad(&format!("unknown value form {other:?}"))),
    })
}

/// Headers serialized in their own order (serde_json's map would sort them): an object, or an
/// array of `[name, value]` pairs when a name repeats.
struct OrderedHeaders<'a>(&'a mailroom::Headers);

impl Serialize for OrderedHeaders<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let headers = self.0;
        if headers.has_repeated_names() {
            let mut seq = serializer.serialize_seq(Some(headers.len()))?;
            for (name, value) in headers.values() {
                seq.serialize_element(&(name, value_to_json(value)))?;
            }
            return seq.end();
        }
        let mut map = serializer.serialize_map(Some(headers.len()))?;
        for (name, value) in headers.values() {
            match value {
                HeaderValue::Text(t) => map.serialize_entry(name, t)?,
                other => map.serialize_entry(name, &value_to_json(other))?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    id: String,
    timestamp: Option<u64>,
    key: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<&'static str>,
    headers: OrderedHeaders<'a>,
    payload: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    source: &'a str,
    attempt: u32,
    redelivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
}

/// One delivery as a JSON line (without the newline).
pub(crate) fn to_line(message: &Message, info: &DeliveryInfo) -> String {
    let (payload, encoding) = payload_text(message.payload());
    let (key, key_encoding) = match message.key_bytes().map(key_text) {
        Some((k, e)) => (Some(k), e),
        None => (None, None),
    };
    let line = Line {
        id: message.id().to_string(),
        timestamp: message.timestamp().map(Timestamp::as_millis),
        key,
        key_encoding,
        headers: OrderedHeaders(message.headers()),
        payload,
        encoding,
        source: &info.source,
        attempt: info.attempt,
        redelivered: info.redelivered,
        partition: info.partition,
        offset: info.offset,
    };
    // Strings, numbers and maps of strings: serializing them cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// Headers read in document order: an object (a name given twice is refused rather than
/// silently merged) or an array of `[name, value]` pairs (names may repeat).
struct HeaderList(Vec<(String, HeaderValue)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = HeaderList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an object of header names to values, or an array of [name, value] pairs",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut list: Vec<(String, HeaderValue)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if list.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "header {name:?} is given twice (an array of [name, value] pairs \
                             may repeat a name)"
                        )));
                    }
                    let value = value_from_json(&name, value).map_err(serde::de::Error::custom)?;
                    list.push((name, value));
                }
                Ok(HeaderList(list))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeaderList, A::Error> {
                let mut list: Vec<(String, HeaderValue)> = Vec::new();
                while let Some((name, value)) = seq.next_element::<(String, serde_json::Value)>()? {
                    let value = value_from_json(&name, value).map_err(serde::de::Error::custom)?;
                    list.push((name, value));
                }
                Ok(HeaderList(list))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InLine {
    payload: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    headers: Option<HeaderList>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_encoding: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    // What `consume` says about the delivery: accepted so its lines can be piped back unchanged.
    #[serde(default, rename = "source")]
    _source: Option<IgnoredAny>,
    #[serde(default, rename = "attempt")]
    _attempt: Option<IgnoredAny>,
    #[serde(default, rename = "redelivered")]
    _redelivered: Option<IgnoredAny>,
    #[serde(default, rename = "partition")]
    _partition: Option<IgnoredAny>,
    #[serde(default, rename = "offset")]
    _offset: Option<IgnoredAny>,
}

/// A JSON line as a message, or what is wrong with it (without the line number: the caller
/// knows it).
pub(crate) fn from_line(line: &str) -> Result<Message, String> {
    let parsed: InLine = serde_json::from_str(line).map_err(|e| {
        // serde_json ends its message with "at line 1 column C": the line is ours to give.
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let text = text.strip_suffix(&position).unwrap_or(&text);
        format!("column {}: {text}", e.column())
    })?;
    let payload = match parsed.encoding.as_deref() {
        None | Some("utf-8") | Some("utf8") => parsed.payload.into_bytes(),
        Some(BASE64) => B64
            .decode(parsed.payload.as_bytes())
            .map_err(|e| format!("\"payload\" is not valid base64 (standard, padded): {e}"))?,
        Some(other) => {
            return Err(format!(
                "\"encoding\" is {other:?}; only \"base64\" (or \"utf-8\", the default) is known"
            ))
        }
    };
    let mut builder = Message::builder(payload);
    match (parsed.key, parsed.key_encoding.as_deref()) {
        (Some(key), None | Some("utf-8") | Some("utf8")) => builder = builder.key(key),
        (Some(key), Some(BASE64)) => {
            let bytes = B64
                .decode(key.as_bytes())
                .map_err(|e| format!("\"key\" is not valid base64 (standard, padded): {e}"))?;
            builder = builder.key_bytes(bytes);
        }
        (_, Some(other)) if other != BASE64 => {
            return Err(format!(
                "\"key_encoding\" is {other:?}; only \"base64\" (or \"utf-8\", the default) \
                 is known"
            ))
        }
        _ => {}
    }
    if let Some(id) = parsed.id {
        builder = builder.id(id);
    }
    if let Some(ms) = parsed.timestamp {
        builder = builder.timestamp(Timestamp::from_millis(ms));
    }
    for (name, value) in parsed.headers.map(|h| h.0).unwrap_or_default() {
        builder = builder.append_header(name, value);
    }
    builder.build().map_err(|e| e.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(message: &Message) -> String {
        let mut info = DeliveryInfo::new("q");
        info.partition = Some(2);
        info.offset = Some(7);
        to_line(message, &info)
    }

    #[test]
    fn binary_payloads_headers_and_keys_round_trip() {
        let message = Message::builder(vec![0xff, b'\n', 0, 0xc3])
            .key("k é")
            .id("order-1")
            .timestamp(Timestamp::from_millis(1_700_000_000_123))
            .header("z", "line\nbreak")
            .header("a", "1")
            .build()
            .unwrap();
        let line = delivered(&message);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r#""encoding":"base64""#), "{line}");
        assert!(line.contains(r#""partition":2,"offset":7"#), "{line}");
        let back = from_line(&line).unwrap();
        assert_eq!(back, message);
        let order: Vec<_> = back.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["z", "a"], "header order is kept");
    }

    #[test]
    fn binary_keys_typed_values_and_repeated_names_round_trip() {
        let message = Message::builder("p")
            .key_bytes(b"\xff\x00")
            .append_header("b", vec![0u8, 0xff])
            .append_header("n", HeaderValue::I32(-5))
            .append_header("b", "text")
            .append_header("f", HeaderValue::F64(f64::INFINITY))
            .append_header("z", HeaderValue::Null)
            .append_header(
                "t",
                HeaderValue::Table(vec![(
                    "k".into(),
                    HeaderValue::Array(vec![
                        HeaderValue::Decimal { scale: 2, value: 5 },
                        HeaderValue::TimestampSecs(9),
                        HeaderValue::U16(7),
                    ]),
                )]),
            )
            .build()
            .unwrap();
        let line = delivered(&message);
        assert!(
            line.contains(r#""key":"/wA=","key_encoding":"base64""#),
            "{line}"
        );
        assert!(line.contains(r#"["b",{"bytes":"AP8="}]"#), "{line}");
        assert_eq!(from_line(&line).unwrap(), message);
        // Unique names: still an object, text values still plain strings.
        let unique = Message::builder("p")
            .header("a", "1")
            .header_value("b", vec![1u8])
            .build()
            .unwrap();
        let line = delivered(&unique);
        assert!(
            line.contains(r#""headers":{"a":"1","b":{"bytes":"AQ=="}}"#),
            "{line}"
        );
        assert_eq!(from_line(&line).unwrap(), unique);
    }

    #[test]
    fn lines_written_before_typed_values_read_as_before() {
        let old = r#"{"id":"order-1","timestamp":null,"key":"k","headers":{"z":"1","a":"2"},"payload":"x","source":"q","attempt":1,"redelivered":false}"#;
        let m = from_line(old).unwrap();
        assert_eq!(m.key(), Some("k"));
        assert_eq!(
            m.headers().iter().collect::<Vec<_>>(),
            [("z", "1"), ("a", "2")]
        );
    }

    #[test]
    fn text_payloads_stay_text() {
        let message = Message::new("hello\nworld");
        let line = delivered(&message);
        assert!(line.contains(r#""payload":"hello\nworld""#), "{line}");
        assert!(!line.contains("encoding"), "{line}");
        assert_eq!(
            from_line(&line).unwrap().payload().as_ref(),
            b"hello\nworld"
        );
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("{", "EOF"),
            (r#"{"headers":{}}"#, "missing field `payload`"),
            (
                r#"{"payload":"x","paylaod":"y"}"#,
                "unknown field `paylaod`",
            ),
            (
                r#"{"payload":"%%","encoding":"base64"}"#,
                "not valid base64",
            ),
            (
                r#"{"payload":"x","encoding":"hex"}"#,
                "\"encoding\" is \"hex\"",
            ),
            (r#"{"payload":"x","headers":{"a":1}}"#, "expected a string"),
            (
                r#"{"payload":"x","headers":{"a":{"i8":300}}}"#,
                "is not of that type",
            ),
            (
                r#"{"payload":"x","headers":{"a":{"bytes":"%%"}}}"#,
                "not valid base64",
            ),
            (
                r#"{"payload":"x","key":"%","key_encoding":"base64"}"#,
                "\"key\" is not valid base64",
            ),
            (
                r#"{"payload":"x","headers":{"a":"1","a":"2"}}"#,
                "given twice",
            ),
            (
                r#"{"payload":"x","headers":{"":"1"}}"#,
                "header name is empty",
            ),
            (r#"{"payload":"x","id":""}"#, "id is empty"),
        ];
        for (line, expected) in cases {
            let err = from_line(line).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
            assert!(!err.contains("at line"), "{line}: {err}");
        }
    }
}
