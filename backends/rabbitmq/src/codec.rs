//! A mailroom [`Message`] as AMQP properties and body, and back.
//!
//! | mailroom        | AMQP 0-9-1                                                        |
//! |-----------------|-------------------------------------------------------------------|
//! | payload         | body                                                              |
//! | id              | `message-id` property                                             |
//! | headers         | headers table: text a long string, bytes a byte array, typed      |
//! |                 | values their AMQP field type (see below)                          |
//! | header order    | `x-mailroom-header-order` (array of names), only when not sorted  |
//! |                 | (to a stream: a string of `<bytes>:<name>` items, since RabbitMQ  |
//! |                 | 3.10's streams drop array headers)                                |
//! | key             | `x-mailroom-key` header (long string; byte array if not UTF-8)    |
//! | timestamp       | `timestamp` property (seconds) and `x-mailroom-timestamp-ms`      |
//! |                 | (`x-mailroom-timestamp` is read too, as Kafka wrote it before)    |
//! | attempt (>1)    | `x-mailroom-attempt` header on client-side requeues (classic)     |
//! | `content-type` header | `content_type` property (AMQP's own slot for the media type)  |
//!
//! Every AMQP field type has a [`HeaderValue`] of its own, both ways: long string ⇄ `Text` (a
//! long string that is not UTF-8 arrives as `Bytes`), short string → `Text`, byte array ⇄
//! `Bytes`, void ⇄ `Null`, boolean ⇄ `Bool`, the eight integer types ⇄ `I8`…`I64` (width and
//! sign kept), float ⇄ `F32`, double ⇄ `F64`, decimal ⇄ `Decimal`, timestamp ⇄
//! `TimestampSecs`, field array ⇄ `Array`, field table ⇄ `Table` (AMQP tables are unordered:
//! a table's entries arrive sorted by name). So the broker's own `x-death` arrives as a table.
//! AMQP tables hold a name once: a message whose headers repeat a name is refused on send with
//! an `Encode` error ([`check`]). The `x-mailroom-*` headers above, and the broker's
//! `x-delivery-count` and `x-stream-offset` (a stream's position of the message, reported as
//! the delivery's offset), are taken off on receive so a message reads back exactly as it was
//! sent.
//!
//! A `message-id` mailroom cannot accept (a control character such as a tab, or empty) gets an
//! id derived from its bytes, the same on every redelivery, and the original is kept in the
//! `x-mailroom-original-id` header ([`mailroom_core::wire::accept_id`]). A message without a
//! `message-id` gets a fresh id per delivery (nothing on the wire identifies it).

use bytes::Bytes;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::BasicProperties;
use mailroom_core::wire::{accept_id, is_timestamp_header, Dropped, LEGACY_TIMESTAMP_HEADERS};
use mailroom_core::{
    Error, ErrorKind, HeaderValue, Headers, Message, MessageId, MessageParts, Result, Timestamp,
};

/// Header carrying the attempt number of a message requeued client-side.
pub use mailroom_core::wire::ATTEMPT_HEADER;
/// Header carried in the AMQP `content_type` property instead of the headers table.
pub use mailroom_core::wire::CONTENT_TYPE_HEADER;
/// Header carrying the message key (AMQP has no key of its own).
pub use mailroom_core::wire::KEY_HEADER;
/// Header carrying the timestamp in milliseconds (the AMQP property has only seconds).
pub use mailroom_core::wire::TIMESTAMP_HEADER;
/// The offset RabbitMQ stamps on every delivery from a stream queue.
pub const STREAM_OFFSET_HEADER: &str = "x-stream-offset";
/// Header marking a message that passed through a delay queue (its `x-death` trail is internal).
pub const DELAYED_HEADER: &str = "x-mailroom-delayed";
/// Header carrying the original order of the headers (AMQP tables are unordered).
pub const ORDER_HEADER: &str = "x-mailroom-header-order";
/// The header quorum queues count deliveries in.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// What a send adds on top of the message itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamp {
    pub persistent: bool,
    /// Set above 1 when a classic-queue requeue republishes the message.
    pub attempt: u32,
    /// Set when the message goes through a delay queue.
    pub delayed: bool,
    /// Set when the message goes to a stream, which keeps no array headers: the header order
    /// travels as text.
    pub to_stream: bool,
}

/// The header order as text: each name as `<length in bytes>:<name>`, so any name fits.
fn order_text<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(|n| format!("{}:{n}", n.len())).collect()
}

/// The names of an order written by [`order_text`]; `None` if it is not one.
fn parse_order_text(mut text: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    while !text.is_empty() {
        let (len, rest) = text.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let name = rest.get(..len)?;
        names.push(name.to_owned());
        text = &rest[len..];
    }
    Some(names)
}

fn short(name: &str) -> Option<ShortString> {
    // Header names are validated to at most 255 bytes, so this only fails on misuse.
    ShortString::try_new(name).ok()
}

/// Refuse, before any I/O, a message AMQP cannot carry as it is: a header name that repeats
/// (an AMQP table holds a name once, so all but one value would be lost).
pub(crate) fn check(message: &Message) -> Result<()> {
    match message.headers().first_repeated_name() {
        None => Ok(()),
        Some(name) => Err(Error::new(
            ErrorKind::Encode,
            format!(
                "message {} has header '{}' more than once; an AMQP headers table holds a name \
                 once",
                message.id(),
                name
            ),
        )),
    }
}

/// A header value as its AMQP field type.
pub(crate) fn to_amqp(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Text(t) => AMQPValue::LongString(LongString::from(t.as_bytes())),
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        HeaderValue::Null => AMQPValue::Void,
        HeaderValue::Bool(v) => AMQPValue::Boolean(*v),
        HeaderValue::I8(v) => AMQPValue::ShortShortInt(*v),
        HeaderValue::U8(v) => AMQPValue::ShortShortUInt(*v),
        HeaderValue::I16(v) => AMQPValue::ShortInt(*v),
        HeaderValue::U16(v) => AMQPValue::ShortUInt(*v),
        HeaderValue::I32(v) => AMQPValue::LongInt(*v),
        HeaderValue::U32(v) => AMQPValue::LongUInt(*v),
        HeaderValue::I64(v) => AMQPValue::LongLongInt(*v),
        HeaderValue::F32(v) => AMQPValue::Float(*v),
        HeaderValue::F64(v) => AMQPValue::Double(*v),
        HeaderValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        HeaderValue::TimestampSecs(v) => AMQPValue::Timestamp(*v),
        HeaderValue::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(to_amqp(item));
            }
            AMQPValue::FieldArray(array)
        }
        HeaderValue::Table(entries) => {
            let mut table = FieldTable::default();
            for (k, v) in entries {
                // Keys were validated to at most 255 bytes when the value was set.
                if let Some(k) = short(k) {
                    table.insert(k, to_amqp(v));
                }
            }
            AMQPValue::FieldTable(table)
        }
        // A form added to core later than this codec: a long string of its debug form would
        // alter it, so it is carried as void and `check` is where it should be refused.
        _ => AMQPValue::Void,
    }
}

/// An AMQP field value as a header value (every field type has one).
pub(crate) fn from_amqp(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::LongString(s) => HeaderValue::from_wire_bytes(s.as_bytes()),
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => HeaderValue::Null,
        AMQPValue::Boolean(v) => HeaderValue::Bool(*v),
        AMQPValue::ShortShortInt(v) => HeaderValue::I8(*v),
        AMQPValue::ShortShortUInt(v) => HeaderValue::U8(*v),
        AMQPValue::ShortInt(v) => HeaderValue::I16(*v),
        AMQPValue::ShortUInt(v) => HeaderValue::U16(*v),
        AMQPValue::LongInt(v) => HeaderValue::I32(*v),
        AMQPValue::LongUInt(v) => HeaderValue::U32(*v),
        AMQPValue::LongLongInt(v) => HeaderValue::I64(*v),
        AMQPValue::Float(v) => HeaderValue::F32(*v),
        AMQPValue::Double(v) => HeaderValue::F64(*v),
        AMQPValue::DecimalValue(d) => HeaderValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::Timestamp(v) => HeaderValue::TimestampSecs(*v),
        AMQPValue::FieldArray(a) => {
            HeaderValue::Array(a.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::FieldTable(t) => HeaderValue::Table(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
                .collect(),
        ),
    }
}

/// The AMQP properties of a message ([`check`] it first: a repeated name keeps its last value).
pub(crate) fn properties(message: &Message, stamp: Stamp) -> BasicProperties {
    let mut table = FieldTable::default();
    let headers = message.headers();
    let mut content_type = None;
    for (name, value) in headers.values() {
        if name == CONTENT_TYPE_HEADER {
            content_type = value.as_text().and_then(short);
            if content_type.is_some() {
                continue;
            }
        }
        if let Some(name) = short(name) {
            table.insert(name, to_amqp(value));
        }
    }
    let sorted = headers
        .values()
        .zip(headers.values().skip(1))
        .all(|((a, _), (b, _))| a < b);
    if !sorted && stamp.to_stream {
        let text = order_text(headers.values().map(|(name, _)| name));
        table.insert(
            ORDER_HEADER.into(),
            AMQPValue::LongString(LongString::from(text.into_bytes())),
        );
    } else if !sorted {
        let mut order = FieldArray::default();
        for (name, _) in headers.values() {
            order.push(AMQPValue::LongString(LongString::from(name.as_bytes())));
        }
        table.insert(ORDER_HEADER.into(), AMQPValue::FieldArray(order));
    }
    match (message.key(), message.key_bytes()) {
        (Some(key), _) => {
            table.insert(
                KEY_HEADER.into(),
                AMQPValue::LongString(LongString::from(key.as_bytes())),
            );
        }
        (None, Some(bytes)) => {
            table.insert(
                KEY_HEADER.into(),
                AMQPValue::ByteArray(ByteArray::from(bytes.to_vec())),
            );
        }
        (None, None) => {}
    }
    if let Some(ts) = message.timestamp() {
        table.insert(
            TIMESTAMP_HEADER.into(),
            AMQPValue::LongLongInt(ts.as_millis().min(i64::MAX as u64) as i64),
        );
    }
    if stamp.attempt > 1 {
        table.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(stamp.attempt));
    }
    if stamp.delayed {
        table.insert(DELAYED_HEADER.into(), AMQPValue::Boolean(true));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(if stamp.persistent { 2 } else { 1 })
        .with_headers(table);
    if let Some(id) = short(&message.id().to_string()) {
        props = props.with_message_id(id);
    }
    if let Some(ts) = message.timestamp() {
        props = props.with_timestamp(ts.as_millis() / 1000);
    }
    if let Some(ct) = content_type {
        props = props.with_content_type(ct);
    }
    props
}

/// What a received message carried besides the message itself.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Received {
    /// `x-mailroom-attempt`, set by a client-side requeue.
    pub attempt: Option<u32>,
    /// `x-delivery-count`, set by quorum queues.
    pub delivery_count: Option<u32>,
    /// `x-stream-offset`, set by stream queues: the message's position in the stream.
    pub stream_offset: Option<i64>,
}

/// A name in the header-order array (written by mailroom as long strings).
fn as_name(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The key's bytes, from a long string or a byte array.
fn key_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

fn is_internal(name: &str, delayed: bool) -> bool {
    matches!(
        name,
        KEY_HEADER
            | ATTEMPT_HEADER
            | DELAYED_HEADER
            | ORDER_HEADER
            | DELIVERY_COUNT_HEADER
            | STREAM_OFFSET_HEADER
    ) || is_timestamp_header(name)
        || (delayed
            && (name == "x-death"
                || name.starts_with("x-first-death-")
                || name.starts_with("x-last-death-")))
}

/// A received AMQP message as a mailroom message.
///
/// A header mailroom cannot hold (a name with a control character, a value over the size
/// limit or nested too deep) is left out with a warning and named in `x-mailroom-dropped`
/// ([`mailroom_core::wire::DROPPED_HEADER`]); so is a key over the key limit.
pub(crate) fn decode(properties: &BasicProperties, body: Vec<u8>) -> (Message, Received) {
    let mut received = Received::default();
    let mut headers = Headers::new();
    let mut dropped = Dropped::default();
    let mut key: Option<Vec<u8>> = None;
    let mut timestamp = properties
        .timestamp()
        .map(|secs| Timestamp::from_millis(secs.saturating_mul(1000)));
    // The content_type property reads back as the header it was sent as; it is merged into a
    // copy of the table so that the header order (sorted, or as the order array says) holds.
    let merged;
    let table = match properties.content_type() {
        Some(ct) => {
            let mut with_ct = properties.headers().clone().unwrap_or_default();
            with_ct.insert(
                CONTENT_TYPE_HEADER.into(),
                AMQPValue::LongString(LongString::from(ct.as_str().as_bytes())),
            );
            merged = with_ct;
            Some(&merged)
        }
        None => properties.headers().as_ref(),
    };
    if let Some(table) = table {
        let map = table.inner();
        let delayed = map.contains_key(DELAYED_HEADER);
        if let Some(v) = map.get(KEY_HEADER).and_then(key_bytes) {
            key = Some(v.to_vec());
        }
        // The current name wins over a name the timestamp was written under before.
        let names =
            std::iter::once(TIMESTAMP_HEADER).chain(LEGACY_TIMESTAMP_HEADERS.iter().copied());
        if let Some(ms) = names.filter_map(|n| map.get(n).and_then(as_u64)).next() {
            timestamp = Some(Timestamp::from_millis(ms));
        }
        received.attempt = map
            .get(ATTEMPT_HEADER)
            .and_then(as_u64)
            .map(|n| n.min(u64::from(u32::MAX)) as u32);
        received.delivery_count = map
            .get(DELIVERY_COUNT_HEADER)
            .and_then(as_u64)
            .map(|n| n.min(u64::from(u32::MAX)) as u32);
        received.stream_offset = map
            .get(STREAM_OFFSET_HEADER)
            .and_then(as_u64)
            .and_then(|n| i64::try_from(n).ok());
        let mut add = |name: &str, value: &AMQPValue| {
            if is_internal(name, delayed) || headers.contains(name) {
                return;
            }
            if let Err(e) = headers.insert_value(name, from_amqp(value)) {
                tracing::warn!(error = %e, "dropping a received header mailroom cannot carry");
                dropped.header(name);
            }
        };
        let order: Vec<&str> = match map.get(ORDER_HEADER) {
            Some(AMQPValue::FieldArray(order)) => {
                order.as_slice().iter().filter_map(as_name).collect()
            }
            _ => Vec::new(),
        };
        for name in order {
            if let Some(value) = map.get(name) {
                add(name, value);
            }
        }
        // To a stream the order travels as text (streams keep no arrays).
        let text_order = match map.get(ORDER_HEADER) {
            Some(AMQPValue::LongString(text)) => std::str::from_utf8(text.as_bytes())
                .ok()
                .and_then(parse_order_text)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for name in text_order {
            if let Some(value) = map.get(name.as_str()) {
                add(&name, value);
            }
        }
        for (name, value) in map {
            add(name.as_str(), value);
        }
    }
    let id = match properties.message_id() {
        // Accepted as it is, or derived from its bytes (the same on every redelivery) with
        // the original kept in a header.
        Some(id) => accept_id(id.as_str().as_bytes(), &mut headers),
        // A message published without a message-id (plain AMQP clients) gets a fresh one; it is
        // stable only for this delivery.
        None => MessageId::generate(),
    };
    if key
        .as_ref()
        .is_some_and(|k| k.len() > mailroom_core::message::MAX_KEY_BYTES)
    {
        tracing::warn!("received key over the key limit left off");
        key = None;
        dropped.key();
    }
    dropped.mark(&mut headers);
    let parts = MessageParts {
        id,
        key: None,
        payload: Bytes::from(body),
        headers,
        timestamp,
        delay: None,
    };
    let message = Message::from_parts_and_binary_key(parts, key.map(std::sync::Arc::from));
    (message, received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_part_and_the_header_order() {
        let sent = Message::builder(&b"\x00bin"[..])
            .header("zeta", "1")
            .header("alpha", "")
            .header("mid", "h\u{e9}")
            .key("k-1")
            .timestamp(Timestamp::from_millis(1_700_000_000_123))
            .build()
            .unwrap();
        let props = properties(
            &sent,
            Stamp {
                persistent: true,
                attempt: 3,
                delayed: true,
                to_stream: false,
            },
        );
        let (got, received) = decode(&props, sent.payload().to_vec());
        assert_eq!(got, sent);
        assert_eq!(received.attempt, Some(3));
        assert_eq!(props.timestamp(), &Some(1_700_000_000));
    }

    #[test]
    fn the_content_type_header_travels_as_the_amqp_property() {
        // Unsorted, so the order array names content-type too.
        let sent = Message::builder("{}")
            .header("z", "1")
            .header(CONTENT_TYPE_HEADER, "application/json")
            .header("a", "2")
            .build()
            .unwrap();
        let props = properties(&sent, Stamp::default());
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        let table = props.headers().as_ref().unwrap().inner();
        assert!(!table.contains_key(CONTENT_TYPE_HEADER));
        assert_eq!(decode(&props, b"{}".to_vec()).0, sent);

        let sorted = Message::builder("x")
            .header("a", "1")
            .header(CONTENT_TYPE_HEADER, "text/plain")
            .header("z", "2")
            .build()
            .unwrap();
        let props = properties(&sorted, Stamp::default());
        assert_eq!(decode(&props, b"x".to_vec()).0, sorted);

        // A plain AMQP publisher's content_type reads as the header, with or without a table.
        let foreign = BasicProperties::default().with_content_type("text/csv".into());
        let (m, _) = decode(&foreign, b"a,b".to_vec());
        assert_eq!(m.headers().get(CONTENT_TYPE_HEADER), Some("text/csv"));
    }

    #[test]
    fn foreign_headers_keep_their_amqp_types_tables_included() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(-5));
        table.insert("b".into(), AMQPValue::Boolean(true));
        table.insert("t".into(), AMQPValue::FieldTable(FieldTable::default()));
        table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        let props = BasicProperties::default().with_headers(table);
        let (m, r) = decode(&props, b"x".to_vec());
        assert_eq!(m.headers().get_value("n"), Some(&HeaderValue::I32(-5)));
        assert_eq!(
            m.headers().get("n"),
            None,
            "not text, so not in the text view"
        );
        assert_eq!(m.headers().get_value("b"), Some(&HeaderValue::Bool(true)));
        assert_eq!(
            m.headers().get_value("t"),
            Some(&HeaderValue::Table(vec![]))
        );
        assert!(!m.headers().contains(DELIVERY_COUNT_HEADER));
        assert_eq!(r.delivery_count, Some(2));
    }

    /// One value of every AMQP field type, as a foreign publisher would write it.
    fn every_amqp_type() -> Vec<(&'static str, AMQPValue, HeaderValue)> {
        let mut inner = FieldTable::default();
        inner.insert("k".into(), AMQPValue::ShortShortUInt(1));
        let mut array = FieldArray::default();
        array.push(AMQPValue::Void);
        array.push(AMQPValue::LongString(LongString::from(&b"s"[..])));
        vec![
            (
                "a-bool",
                AMQPValue::Boolean(false),
                HeaderValue::Bool(false),
            ),
            ("b-i8", AMQPValue::ShortShortInt(-8), HeaderValue::I8(-8)),
            ("c-u8", AMQPValue::ShortShortUInt(8), HeaderValue::U8(8)),
            ("d-i16", AMQPValue::ShortInt(-16), HeaderValue::I16(-16)),
            ("e-u16", AMQPValue::ShortUInt(16), HeaderValue::U16(16)),
            ("f-i32", AMQPValue::LongInt(-32), HeaderValue::I32(-32)),
            ("g-u32", AMQPValue::LongUInt(32), HeaderValue::U32(32)),
            ("h-i64", AMQPValue::LongLongInt(-64), HeaderValue::I64(-64)),
            ("i-f32", AMQPValue::Float(1.5), HeaderValue::F32(1.5)),
            ("j-f64", AMQPValue::Double(-2.25), HeaderValue::F64(-2.25)),
            (
                "k-decimal",
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 12345,
                }),
                HeaderValue::Decimal {
                    scale: 2,
                    value: 12345,
                },
            ),
            (
                "l-long-string",
                AMQPValue::LongString(LongString::from(&b"text"[..])),
                HeaderValue::from("text"),
            ),
            (
                "m-binary-long-string",
                AMQPValue::LongString(LongString::from(&b"\xff\x00"[..])),
                HeaderValue::Bytes(Bytes::from_static(b"\xff\x00")),
            ),
            (
                "n-byte-array",
                AMQPValue::ByteArray(ByteArray::from(vec![0u8, 0xff])),
                HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
            ),
            ("o-void", AMQPValue::Void, HeaderValue::Null),
            (
                "p-timestamp",
                AMQPValue::Timestamp(1_700_000_000),
                HeaderValue::TimestampSecs(1_700_000_000),
            ),
            (
                "q-array",
                AMQPValue::FieldArray(array),
                HeaderValue::Array(vec![HeaderValue::Null, HeaderValue::from("s")]),
            ),
            (
                "r-table",
                AMQPValue::FieldTable(inner),
                HeaderValue::Table(vec![("k".into(), HeaderValue::U8(1))]),
            ),
        ]
    }

    #[test]
    fn every_amqp_field_type_decodes_typed_and_encodes_back_the_same() {
        let mut table = FieldTable::default();
        for (name, amqp, _) in every_amqp_type() {
            table.insert(name.into(), amqp);
        }
        let props = BasicProperties::default().with_headers(table.clone());
        let (m, _) = decode(&props, b"x".to_vec());
        let got: Vec<(&str, &HeaderValue)> = m.headers().values().collect();
        let want = every_amqp_type();
        let want: Vec<(&str, &HeaderValue)> = want.iter().map(|(n, _, v)| (*n, v)).collect();
        assert_eq!(got, want);
        // Sent on, each keeps its AMQP type (a non-UTF-8 long string becomes a byte array).
        let again = properties(&m, Stamp::default());
        let sent = again.headers().as_ref().unwrap().inner();
        for (name, amqp, _) in every_amqp_type() {
            let expected = match name {
                "m-binary-long-string" => AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0])),
                _ => amqp,
            };
            assert_eq!(sent.get(name), Some(&expected), "{name}");
        }
    }

    #[test]
    fn an_unacceptable_message_id_is_derived_the_same_every_time_and_kept() {
        let props = BasicProperties::default().with_message_id("order\t7".into());
        let (a, _) = decode(&props, b"x".to_vec());
        let (b, _) = decode(&props, b"x".to_vec());
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), &MessageId::derive(b"order\t7"));
        assert_eq!(
            a.headers().get(mailroom_core::wire::ORIGINAL_ID_HEADER),
            Some("order\t7")
        );
    }

    #[test]
    fn binary_keys_travel_as_byte_arrays_and_repeated_names_are_refused() {
        let sent = Message::builder("x")
            .key_bytes(b"\xfek")
            .header_value("bin", &b"\x00"[..])
            .build()
            .unwrap();
        check(&sent).unwrap();
        let props = properties(&sent, Stamp::default());
        assert_eq!(decode(&props, b"x".to_vec()).0, sent);
        let twice = Message::builder("x")
            .append_header("h", "1")
            .append_header("h", "2")
            .build()
            .unwrap();
        let err = check(&twice).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode);
        assert!(
            err.to_string().contains("header 'h' more than once"),
            "{err}"
        );
    }

    #[test]
    fn a_message_with_the_old_timestamp_name_decodes_with_its_timestamp() {
        let mut table = FieldTable::default();
        table.insert(
            "x-mailroom-timestamp".into(),
            AMQPValue::LongString(LongString::from(&b"1700000000123"[..])),
        );
        let props = BasicProperties::default().with_headers(table);
        let (m, _) = decode(&props, b"x".to_vec());
        assert_eq!(
            m.timestamp(),
            Some(Timestamp::from_millis(1_700_000_000_123))
        );
        assert!(m.headers().is_empty(), "the old name is internal too");
    }
    #[test]
    fn to_a_stream_the_header_order_travels_as_text_and_reads_back() {
        let sent = Message::builder(&b"x"[..])
            .header("zeta", "1")
            .header("a:b", "2")
            .header("h\u{e9}", "3")
            .build()
            .unwrap();
        let stamp = Stamp {
            to_stream: true,
            ..Stamp::default()
        };
        let props = properties(&sent, stamp);
        let table = props.headers().clone().unwrap();
        assert!(matches!(
            table.inner().get(ORDER_HEADER),
            Some(AMQPValue::LongString(_))
        ));
        // What a stream hands back: the table without arrays, in its own (sorted) order.
        assert_eq!(decode(&props, b"x".to_vec()).0, sent);
        assert_eq!(
            parse_order_text("4:zeta3:a:b"),
            Some(vec!["zeta".into(), "a:b".into()])
        );
        assert_eq!(parse_order_text("9:short"), None);
    }

    #[test]
    fn a_stream_offset_is_the_deliverys_position_not_a_message_header() {
        let mut table = FieldTable::default();
        table.insert(STREAM_OFFSET_HEADER.into(), AMQPValue::LongLongInt(41));
        let props = BasicProperties::default().with_headers(table);
        let (m, r) = decode(&props, b"x".to_vec());
        assert!(m.headers().is_empty(), "{:?}", m.headers());
        assert_eq!(r.stream_offset, Some(41));
    }
}
