//! The one-JSON-object-per-line shape `consume --format json` writes and `produce --from-json`
//! reads, so that `consume | produce` moves messages between brokers byte-exactly.
//!
//! ```json
//! {"id":"…","timestamp":1700000000000,"key":"k","headers":{"a":"1"},"payload":"text",
//!  "source":"orders","attempt":1,"redelivered":false,"partition":0,"offset":41}
//! ```
//!
//! `payload` is the payload itself when it is valid UTF-8; otherwise it is its standard base64
//! (with padding) and `"encoding": "base64"` says so. `headers` keeps the message's header order
//! (written and read in document order). `timestamp` is milliseconds since the Unix epoch, or
//! null. `source`, `attempt`, `redelivered`, `partition` and `offset` describe the delivery;
//! `produce` accepts and ignores them, since a new send is a first attempt at a new position.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use mailroom::{DeliveryInfo, Message, Timestamp};
use serde::de::{IgnoredAny, MapAccess, Visitor};
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

/// Headers serialized as a JSON object in their own order (serde_json's map would sort them).
struct OrderedHeaders<'a>(&'a mailroom::Headers);

impl Serialize for OrderedHeaders<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    id: String,
    timestamp: Option<u64>,
    key: Option<&'a str>,
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
    let line = Line {
        id: message.id().to_string(),
        timestamp: message.timestamp().map(Timestamp::as_millis),
        key: message.key(),
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

/// Headers read in document order; a name given twice is refused rather than silently merged.
struct HeaderList(Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = HeaderList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut list: Vec<(String, String)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    if list.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "header {name:?} is given twice"
                        )));
                    }
                    list.push((name, value));
                }
                Ok(HeaderList(list))
            }
        }
        deserializer.deserialize_map(ListVisitor)
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
    if let Some(key) = parsed.key {
        builder = builder.key(key);
    }
    if let Some(id) = parsed.id {
        builder = builder.id(id);
    }
    if let Some(ms) = parsed.timestamp {
        builder = builder.timestamp(Timestamp::from_millis(ms));
    }
    for (name, value) in parsed.headers.map(|h| h.0).unwrap_or_default() {
        builder = builder.header(name, value);
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
