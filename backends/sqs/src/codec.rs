//! The wire form of a message in SQS: body, attributes, FIFO ids; and back.
//!
//! SQS bodies and string attributes must be made of the XML characters it allows, attribute values
//! must not be empty, and AWS takes at most 10 attributes per message. Everything a mailroom
//! message may hold is fitted into that here, and only here.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    Message as SqsMessage, MessageAttributeValue, MessageSystemAttributeName,
};
use base64::Engine as _;
use bytes::Bytes;
use mailroom_core::wire::{accept_id, Dropped};
use mailroom_core::{
    trace_context, Error, ErrorKind, HeaderValue, Headers, Message, MessageParts, Result, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::filter::{word_count, ROUTING_KEY_ATTR, ROUTING_WORDS_ATTR};
use crate::{MAX_ATTRIBUTES, MAX_SEND_DELAY};

/// Binary attribute holding id, key, timestamp and the header order (JSON).
pub const META_ATTR: &str = "mailroom.meta";
/// String attribute marking a body that is not the payload itself (`base64` or `empty`).
pub const ENCODING_ATTR: &str = "mailroom.encoding";
/// Attribute names mailroom keeps for itself; headers with them are always packed.
const RESERVED_PREFIX: &str = "mailroom.";
/// Body sent for an empty payload (SQS refuses empty bodies), marked `empty`.
const EMPTY_BODY: &str = "-";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Serialize, Deserialize)]
struct Meta {
    v: u8,
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// A key that is not UTF-8, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kb: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    h: Vec<HeaderRef>,
}

/// One header in order: the name of an attribute that carries it, the text pair itself, or a
/// value of another form as (name, form, text): form `b64` is bytes, base64.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum HeaderRef {
    Attr(String),
    Packed(String, String),
    Typed(String, String, String),
}

/// The form tag of a packed bytes value.
const BYTES_FORM: &str = "b64";

/// A message as SQS carries it.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub body: String,
    pub attributes: HashMap<String, MessageAttributeValue>,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
    pub delay_seconds: Option<i32>,
    /// Size as SQS counts it: body plus every attribute's name, type and value.
    pub size: usize,
}

/// Whether SQS carries `c` in a body or string attribute.
///
/// AWS allows #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF; characters beyond the Basic
/// Multilingual Plane are treated as unsafe too, because some SQS-API servers check UTF-16 code
/// units and refuse surrogate pairs. Encoding them costs size, never correctness.
fn xml_safe(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
}

pub(crate) fn text_safe(s: &str) -> bool {
    s.chars().all(xml_safe)
}

/// Whether `name` can be an SQS message attribute name that mailroom does not reserve.
pub(crate) fn attribute_name_ok(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && !lower.starts_with(RESERVED_PREFIX)
}

fn attr_size(name: &str, value: &MessageAttributeValue) -> usize {
    // Binary values are counted as their base64 text: some servers count it that way, and it is
    // never smaller than the raw bytes AWS counts.
    name.len()
        + value.data_type().len()
        + value.string_value().map_or(0, str::len)
        + value
            .binary_value()
            .map_or(0, |b| b.as_ref().len().div_ceil(3) * 4)
}

fn string_attr(value: &str) -> Result<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(build_failed)
}

fn binary_attr(value: Vec<u8>) -> Result<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("Binary")
        .binary_value(Blob::new(value))
        .build()
        .map_err(build_failed)
}

fn build_failed(e: aws_sdk_sqs::error::BuildError) -> Error {
    Error::new(ErrorKind::Encode, "message attribute could not be built").with_source(e)
}

/// A FIFO deduplication id for `id`: the id itself when SQS accepts it, else a stable hash.
pub(crate) fn dedup_id(id: &str) -> String {
    if (1..=128).contains(&id.len()) && id.bytes().all(|b| (33..=126).contains(&b)) {
        return id.to_owned();
    }
    // Two FNV-1a passes with different offsets: stable across processes and Rust versions.
    let fnv = |offset: u64| {
        id.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "h-{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    )
}

/// Whether `name` is a W3C trace context header, given an attribute before other headers.
fn is_trace_header(name: &str) -> bool {
    name == trace_context::TRACEPARENT || name == trace_context::TRACESTATE
}

/// Encode `message` for a queue (`fifo` if the queue is FIFO), checking every SQS limit.
pub(crate) fn encode(message: &Message, fifo: bool, max_size: usize) -> Result<Encoded> {
    encode_with(message, fifo, max_size, None)
}

/// Encode `message` for an SNS Publish to an exchange with `routing_key`.
///
/// The queue receives it by raw delivery as a direct send would deliver it, plus two attributes
/// the subscriptions' filter policies match: the routing key ([`ROUTING_KEY_ATTR`], absent when
/// empty) and its word count ([`ROUTING_WORDS_ATTR`]). They take their slots before headers, so
/// the whole still fits in the 10 attributes SQS accepts from a raw delivery. SNS has no
/// per-message delay, so a delayed message is refused rather than sent at once.
pub(crate) fn encode_for_exchange(
    message: &Message,
    routing_key: &str,
    fifo: bool,
    max_size: usize,
) -> Result<Encoded> {
    if message.delay().is_some() {
        return Err(Error::unsupported(format!(
            "message {} has a delay, but SNS (which carries exchanges on SQS) has no per-message \
             delay; send it to a queue, or give the queue a DelaySeconds",
            message.id()
        )));
    }
    if !text_safe(routing_key) {
        return Err(Error::invalid_input(format!(
            "routing key {routing_key:?} has characters SNS does not carry in an attribute"
        )));
    }
    encode_with(message, fifo, max_size, Some(routing_key))
}

fn encode_with(
    message: &Message,
    fifo: bool,
    max_size: usize,
    routing_key: Option<&str>,
) -> Result<Encoded> {
    let payload = message.payload();
    let text = std::str::from_utf8(payload)
        .ok()
        .filter(|t| !t.is_empty() && text_safe(t));
    let mut attributes = HashMap::new();
    let body = match text {
        Some(t) => t.to_owned(),
        None if payload.is_empty() => {
            attributes.insert(ENCODING_ATTR.to_owned(), string_attr("empty")?);
            EMPTY_BODY.to_owned()
        }
        None => {
            attributes.insert(ENCODING_ATTR.to_owned(), string_attr("base64")?);
            B64.encode(payload)
        }
    };
    // One slot for the meta attribute, one for the encoding marker if present (the routing
    // attributes of an exchange publish are already in). The W3C trace
    // context takes its slots first (at most two of the eight or nine left), so a foreign
    // consumer's OpenTelemetry instrumentation finds `traceparent` as a message attribute
    // however many headers the message has; the others fill what is left, in order.
    if let Some(key) = routing_key {
        let words = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(word_count(key).to_string())
            .build()
            .map_err(build_failed)?;
        attributes.insert(ROUTING_WORDS_ATTR.to_owned(), words);
        if !key.is_empty() {
            attributes.insert(ROUTING_KEY_ATTR.to_owned(), string_attr(key)?);
        }
    }
    let headers = message.headers();
    if let Some((name, value)) = headers
        .values()
        .find(|(_, v)| !matches!(v, HeaderValue::Text(_) | HeaderValue::Bytes(_)))
    {
        return Err(Error::new(
            ErrorKind::Encode,
            format!(
                "header '{name}' of message {} is a {} value; SQS carries text and bytes header \
                 values only",
                message.id(),
                value.type_name()
            ),
        ));
    }
    let mut free = MAX_ATTRIBUTES - 1 - attributes.len();
    let mut as_attribute = vec![false; headers.len()];
    for trace_first in [true, false] {
        for (i, (name, value)) in headers.values().enumerate() {
            if is_trace_header(name) != trace_first
                || free == 0
                || !attribute_name_ok(name)
                // An attribute holds one value: a repeated name's others are packed.
                || attributes.contains_key(name)
            {
                continue;
            }
            let attribute = match value {
                HeaderValue::Text(t) if !t.is_empty() && text_safe(t) => string_attr(t)?,
                HeaderValue::Bytes(b) if !b.is_empty() => binary_attr(b.to_vec())?,
                _ => continue,
            };
            attributes.insert(name.to_owned(), attribute);
            as_attribute[i] = true;
            free -= 1;
        }
    }
    let order: Vec<HeaderRef> = headers
        .values()
        .zip(as_attribute)
        .map(|((name, value), attribute)| match (attribute, value) {
            (true, _) => HeaderRef::Attr(name.to_owned()),
            (false, HeaderValue::Bytes(b)) => {
                HeaderRef::Typed(name.to_owned(), BYTES_FORM.to_owned(), B64.encode(b))
            }
            // Only text is left: other forms were refused above.
            (false, v) => HeaderRef::Packed(name.to_owned(), v.as_text().unwrap_or("").to_owned()),
        })
        .collect();
    let meta = Meta {
        v: 1,
        id: message.id().to_string(),
        key: message.key().map(str::to_owned),
        kb: message
            .key()
            .is_none()
            .then(|| message.key_bytes().map(|k| B64.encode(k)))
            .flatten(),
        ts: message.timestamp().map(Timestamp::as_millis),
        h: order,
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| {
        Error::new(ErrorKind::Encode, "message metadata could not be encoded").with_source(e)
    })?;
    attributes.insert(META_ATTR.to_owned(), binary_attr(meta)?);

    let size = body.len()
        + attributes
            .iter()
            .map(|(n, v)| attr_size(n, v))
            .sum::<usize>();
    if size > max_size {
        let why = if text.is_none() && !payload.is_empty() {
            " (a payload that is not SQS-safe text is sent base64-encoded, 4/3 its size)"
        } else {
            ""
        };
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "message {} is {size} bytes as SQS counts it (payload {} bytes{why}); at most \
                 {max_size} are allowed",
                message.id(),
                payload.len()
            ),
        ));
    }

    let delay_seconds = match message.delay() {
        None => None,
        Some(_) if fifo => {
            return Err(Error::invalid_input(format!(
                "message {} has a delay, but FIFO queues take no per-message delay (set the \
                 queue's DelaySeconds through QueueSpec::extra instead)",
                message.id()
            )))
        }
        Some(d) if d > MAX_SEND_DELAY => {
            return Err(Error::invalid_input(format!(
                "message {} has a delay of {d:?}; SQS delays at most {MAX_SEND_DELAY:?}",
                message.id()
            )))
        }
        // Whole seconds, rounded up: a delayed message must never arrive early.
        Some(d) => Some(ceil_secs(d) as i32),
    };
    let (group_id, dedup) = if fifo {
        let key = message.key().ok_or_else(|| {
            let why = match message.has_binary_key() {
                true => "a key that is not UTF-8 text",
                false => "no key",
            };
            Error::invalid_input(format!(
                "message {} has {why}, but a FIFO queue needs a text key (the key is the \
                 MessageGroupId)",
                message.id()
            ))
        })?;
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(Error::invalid_input(format!(
                "message {} key {key:?} cannot be a MessageGroupId: 1 to 128 printable ASCII \
                 characters without spaces",
                message.id()
            )));
        }
        (
            Some(key.to_owned()),
            Some(dedup_id(&message.id().to_string())),
        )
    } else {
        (None, None)
    };
    Ok(Encoded {
        body,
        attributes,
        group_id,
        dedup_id: dedup,
        delay_seconds,
        size,
    })
}

/// Seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Decode a received SQS message into a mailroom message.
///
/// A message mailroom sent comes back exactly as it was sent. One from another client is read
/// as it is: its body as the payload, its SQS message id, string and number attributes as text
/// headers and binary attributes as bytes headers (sorted by name), the group id as key.
/// A header mailroom cannot hold is left out with a warning and named in `x-mailroom-dropped`
/// ([`mailroom_core::wire::DROPPED_HEADER`]).
pub(crate) fn decode(msg: &SqsMessage) -> Message {
    let empty = HashMap::new();
    let attrs = msg.message_attributes().unwrap_or(&empty);
    let body = msg.body().unwrap_or("");
    let payload = match attrs.get(ENCODING_ATTR).and_then(|a| a.string_value()) {
        Some("base64") => match B64.decode(body) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::warn!(error = %e, "body marked base64 is not base64; kept as text");
                Bytes::copy_from_slice(body.as_bytes())
            }
        },
        Some("empty") => Bytes::new(),
        _ => Bytes::copy_from_slice(body.as_bytes()),
    };
    let meta = attrs
        .get(META_ATTR)
        .and_then(|a| a.binary_value())
        .and_then(|b| match serde_json::from_slice::<Meta>(b.as_ref()) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "mailroom.meta attribute is not readable; message read as foreign");
                None
            }
        });
    let system = msg.attributes();
    let sys = |name: MessageSystemAttributeName| system.and_then(|s| s.get(&name));
    match meta {
        Some(meta) => {
            let mut headers = Headers::new();
            let mut dropped = Dropped::default();
            for h in meta.h {
                let (name, value) = match h {
                    HeaderRef::Packed(n, v) => (n, HeaderValue::Text(v)),
                    HeaderRef::Typed(n, form, v) => match (form.as_str(), B64.decode(&v)) {
                        (BYTES_FORM, Ok(b)) => (n, HeaderValue::Bytes(Bytes::from(b))),
                        _ => {
                            tracing::warn!(header = %n, form = %form, "packed header of an unknown form or not base64; dropped");
                            dropped.header(&n);
                            continue;
                        }
                    },
                    HeaderRef::Attr(n) => {
                        let value = attrs.get(&n).and_then(|a| {
                            match (a.string_value(), a.binary_value()) {
                                (Some(s), _) => Some(HeaderValue::Text(s.to_owned())),
                                (None, Some(b)) => {
                                    Some(HeaderValue::Bytes(Bytes::copy_from_slice(b.as_ref())))
                                }
                                (None, None) => None,
                            }
                        });
                        let Some(v) = value else {
                            tracing::warn!(header = %n, "header attribute missing; dropped");
                            dropped.header(&n);
                            continue;
                        };
                        (n, v)
                    }
                };
                if let Err(e) = headers.append(name.as_str(), value) {
                    tracing::warn!(error = %e, "received header is not valid; dropped");
                    dropped.header(&name);
                }
            }
            let id = accept_id(meta.id.as_bytes(), &mut headers);
            let binary_key = match meta.kb.as_deref().map(|k| B64.decode(k)) {
                Some(Ok(k)) if k.len() <= mailroom_core::message::MAX_KEY_BYTES => Some(k),
                Some(_) => {
                    tracing::warn!("mailroom.meta key is not base64 or too long; dropped");
                    dropped.key();
                    None
                }
                None => None,
            };
            dropped.mark(&mut headers);
            Message::from_parts_and_binary_key(
                MessageParts {
                    id,
                    key: meta.key.map(Into::into),
                    payload,
                    headers,
                    timestamp: meta.ts.map(Timestamp::from_millis),
                    delay: None,
                },
                binary_key.map(std::sync::Arc::from),
            )
        }
        None => {
            let mut names: Vec<&String> = attrs
                .keys()
                .filter(|n| n.as_str() != ENCODING_ATTR)
                .collect();
            names.sort();
            let mut headers = Headers::new();
            let mut dropped = Dropped::default();
            for name in names {
                let a = &attrs[name];
                let value = match (a.string_value(), a.binary_value()) {
                    (Some(s), _) => HeaderValue::Text(s.to_owned()),
                    (None, Some(b)) => HeaderValue::Bytes(Bytes::copy_from_slice(b.as_ref())),
                    (None, None) => HeaderValue::Text(String::new()),
                };
                if let Err(e) = headers.insert_value(name.clone(), value) {
                    tracing::warn!(error = %e, "received attribute is not a valid header; dropped");
                    dropped.header(name);
                }
            }
            dropped.mark(&mut headers);
            // SQS ids are UUIDs; anything else still gets an id stable over redeliveries.
            let id = match msg.message_id() {
                Some(id) => accept_id(id.as_bytes(), &mut headers),
                None => mailroom_core::MessageId::generate(),
            };
            let timestamp = sys(MessageSystemAttributeName::SentTimestamp)
                .and_then(|t| t.parse().ok())
                .map(Timestamp::from_millis);
            Message::from_parts(MessageParts {
                id,
                key: sys(MessageSystemAttributeName::MessageGroupId).map(|k| k.as_str().into()),
                payload,
                headers,
                timestamp,
                delay: None,
            })
        }
    }
}

/// The receive count SQS reports (1 on first delivery).
pub(crate) fn receive_count(msg: &SqsMessage) -> u32 {
    msg.attributes()
        .and_then(|s| s.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: &Message, fifo: bool) -> Message {
        let e = encode(m, fifo, 1 << 20).unwrap();
        assert!(e.attributes.len() <= MAX_ATTRIBUTES);
        let sqs = SqsMessage::builder()
            .body(e.body)
            .set_message_attributes(Some(e.attributes))
            .build();
        decode(&sqs)
    }

    #[test]
    fn binary_empty_and_text_payloads_round_trip() {
        for payload in [
            &b"\x00\xff\xfe binary"[..],
            b"",
            b"plain text",
            "emoji \u{1f600}".as_bytes(),
        ] {
            let m = Message::builder(Bytes::copy_from_slice(payload))
                .header("empty", "")
                .header("nul", "a\0b")
                .key("k")
                .timestamp(Timestamp::from_millis(5))
                .build()
                .unwrap();
            assert_eq!(round_trip(&m, false), m);
        }
    }

    #[test]
    fn many_headers_are_packed_in_order_within_ten_attributes() {
        let mut b = Message::builder("x");
        for i in (0..30).rev() {
            b = b.header(format!("h{i}"), format!("v{i}"));
        }
        let m = b.header("mailroom.meta", "mine").build().unwrap();
        let e = encode(&m, false, 1 << 20).unwrap();
        assert_eq!(e.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(round_trip(&m, false), m);
    }

    #[test]
    fn the_trace_context_gets_attribute_slots_before_other_headers() {
        let mut b = Message::builder("x");
        for i in 0..12 {
            b = b.header(format!("h{i}"), format!("v{i}"));
        }
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let m = b
            .header(trace_context::TRACEPARENT, traceparent)
            .header(trace_context::TRACESTATE, "rojo=1")
            .build()
            .unwrap();
        let e = encode(&m, false, 1 << 20).unwrap();
        assert_eq!(e.attributes.len(), MAX_ATTRIBUTES);
        let attr = |n: &str| e.attributes.get(n).and_then(|a| a.string_value());
        assert_eq!(attr(trace_context::TRACEPARENT), Some(traceparent));
        assert_eq!(attr(trace_context::TRACESTATE), Some("rojo=1"));
        assert_eq!(attr("h0"), Some("v0"));
        assert!(!e.attributes.contains_key("h11"), "packed into the meta");
        assert_eq!(round_trip(&m, false), m, "order and values kept");
    }

    #[test]
    fn an_exchange_publish_carries_the_routing_attributes_within_ten() {
        let mut b = Message::builder(&b"\x00\xffbinary"[..]).key("k");
        for i in 0..20 {
            b = b.header(format!("h{i}"), format!("v{i}"));
        }
        let m = b.build().unwrap();
        let e = encode_for_exchange(&m, "order.created.eu", false, 1 << 20).unwrap();
        assert_eq!(e.attributes.len(), MAX_ATTRIBUTES);
        let attr = |n: &str| e.attributes.get(n).and_then(|a| a.string_value());
        assert_eq!(attr(ROUTING_KEY_ATTR), Some("order.created.eu"));
        assert_eq!(attr(ROUTING_WORDS_ATTR), Some("3"));
        assert_eq!(attr("h0"), Some("v0"), "headers fill the slots left");
        let sqs = SqsMessage::builder()
            .body(e.body)
            .set_message_attributes(Some(e.attributes))
            .build();
        assert_eq!(
            decode(&sqs),
            m,
            "the routing attributes stay out of the headers"
        );

        let empty = encode_for_exchange(&Message::new("x"), "", false, 1 << 20).unwrap();
        assert!(!empty.attributes.contains_key(ROUTING_KEY_ATTR));
        assert_eq!(
            empty.attributes[ROUTING_WORDS_ATTR].string_value(),
            Some("0")
        );
        let late = Message::builder("x")
            .delay(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(
            encode_for_exchange(&late, "k", false, 1 << 20)
                .unwrap_err()
                .kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn limits_are_enforced_before_io() {
        let big = Message::new(vec![b'a'; 1 << 20]);
        assert_eq!(
            encode(&big, false, 1 << 20).unwrap_err().kind(),
            ErrorKind::PayloadTooLarge
        );
        let no_key = Message::new("x");
        assert!(encode(&no_key, true, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("no key"));
        let late = Message::builder("x")
            .delay(Duration::from_secs(3600))
            .build()
            .unwrap();
        assert_eq!(
            encode(&late, false, 1 << 20).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let soon = Message::builder("x")
            .delay(Duration::from_millis(1500))
            .build()
            .unwrap();
        assert_eq!(
            encode(&soon, false, 1 << 20).unwrap().delay_seconds,
            Some(2)
        );
    }

    #[test]
    fn bytes_values_and_binary_keys_round_trip_as_attributes_or_packed() {
        let mut b = Message::builder("x").key_bytes(b"\xffk");
        for i in 0..12 {
            b = b.append_header(format!("b{i}"), vec![0xff, i as u8]);
        }
        let m = b
            .append_header("b0", "again, as text")
            .append_header("empty-bytes", Vec::new())
            .build()
            .unwrap();
        let e = encode(&m, false, 1 << 20).unwrap();
        assert_eq!(e.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(
            e.attributes["b0"]
                .binary_value()
                .map(|b| b.as_ref().to_vec()),
            Some(vec![0xff, 0]),
            "a Binary attribute"
        );
        assert_eq!(round_trip(&m, false), m, "order, repeats and bytes kept");
        let typed = Message::builder("x")
            .header_value("n", HeaderValue::I64(1))
            .build()
            .unwrap();
        let err = encode(&typed, false, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode);
        assert!(err.to_string().contains("header 'n'"), "{err}");
        let fifo = Message::builder("x").key_bytes(b"\xff").build().unwrap();
        assert!(encode(&fifo, true, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
    }

    #[test]
    fn foreign_binary_attributes_arrive_as_bytes() {
        let mut attributes = HashMap::new();
        attributes.insert("bin".to_owned(), binary_attr(vec![0, 0xff]).unwrap());
        attributes.insert("txt".to_owned(), string_attr("t").unwrap());
        let sqs = SqsMessage::builder()
            .body("b")
            .message_id("id\t1")
            .set_message_attributes(Some(attributes))
            .build();
        let m = decode(&sqs);
        assert_eq!(
            m.headers().get_value("bin"),
            Some(&HeaderValue::Bytes(Bytes::from_static(&[0, 0xff])))
        );
        assert_eq!(m.headers().get("txt"), Some("t"));
        assert_eq!(m.id(), decode(&sqs).id(), "stable");
        assert_eq!(
            m.headers().get(mailroom_core::wire::ORIGINAL_ID_HEADER),
            Some("id\t1")
        );
    }

    #[test]
    fn dedup_ids_fit_sqs_rules() {
        assert_eq!(dedup_id("order-42"), "order-42");
        let hashed = dedup_id("caf\u{e9} with spaces");
        assert!(hashed.len() <= 128 && hashed.bytes().all(|b| (33..=126).contains(&b)));
        assert_eq!(hashed, dedup_id("caf\u{e9} with spaces"));
    }

    #[test]
    fn attribute_names_follow_sqs_rules() {
        assert!(attribute_name_ok("trace-id"));
        assert!(!attribute_name_ok("AWS.x"));
        assert!(!attribute_name_ok("a..b"));
        assert!(!attribute_name_ok(".a"));
        assert!(!attribute_name_ok("has space"));
        assert!(!attribute_name_ok("mailroom.meta"));
    }
}
