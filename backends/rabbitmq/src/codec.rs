//! A mailroom [`Message`] as AMQP properties and body, and back.
//!
//! | mailroom        | AMQP 0-9-1                                                        |
//! |-----------------|-------------------------------------------------------------------|
//! | payload         | body                                                              |
//! | id              | `message-id` property                                             |
//! | headers         | headers table, each value a long string                           |
//! | header order    | `x-mailroom-header-order` (array of names), only when not sorted  |
//! |                 | (to a stream: a string of `<bytes>:<name>` items, since RabbitMQ  |
//! |                 | 3.10's streams drop array headers)                                |
//! | key             | `x-mailroom-key` header (long string)                             |
//! | timestamp       | `timestamp` property (seconds) and `x-mailroom-timestamp-ms`      |
//! |                 | (`x-mailroom-timestamp` is read too, as Kafka wrote it before)    |
//! | attempt (>1)    | `x-mailroom-attempt` header on client-side requeues (classic)     |
//! | `content-type` header | `content_type` property (AMQP's own slot for the media type)  |
//!
//! Received headers of other AMQP types (numbers, booleans, timestamps) become their decimal
//! text; tables and arrays (such as the broker's `x-death`) are left out, since mailroom header
//! values are strings. The `x-mailroom-*` headers above, and the broker's `x-delivery-count`
//! and `x-stream-offset` (a stream's position of the message, reported as the delivery's
//! offset), are taken off on receive so a message reads back exactly as it was sent.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use mailroom_core::wire::{is_timestamp_header, LEGACY_TIMESTAMP_HEADERS};
use mailroom_core::{Headers, Message, MessageId, MessageParts, Timestamp};

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

/// The AMQP properties of a message.
pub(crate) fn properties(message: &Message, stamp: Stamp) -> BasicProperties {
    let mut table = FieldTable::default();
    let headers = message.headers();
    let mut content_type = None;
    for (name, value) in headers.iter() {
        if name == CONTENT_TYPE_HEADER {
            content_type = short(value);
            if content_type.is_some() {
                continue;
            }
        }
        if let Some(name) = short(name) {
            table.insert(
                name,
                AMQPValue::LongString(LongString::from(value.as_bytes())),
            );
        }
    }
    let sorted = headers
        .iter()
        .zip(headers.iter().skip(1))
        .all(|((a, _), (b, _))| a < b);
    if !sorted && stamp.to_stream {
        let text = order_text(headers.iter().map(|(name, _)| name));
        table.insert(
            ORDER_HEADER.into(),
            AMQPValue::LongString(LongString::from(text.into_bytes())),
        );
    } else if !sorted {
        let mut order = FieldArray::default();
        for (name, _) in headers.iter() {
            order.push(AMQPValue::LongString(LongString::from(name.as_bytes())));
        }
        table.insert(ORDER_HEADER.into(), AMQPValue::FieldArray(order));
    }
    if let Some(key) = message.key() {
        table.insert(
            KEY_HEADER.into(),
            AMQPValue::LongString(LongString::from(key.as_bytes())),
        );
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

fn as_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        _ => return None,
    })
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
pub(crate) fn decode(properties: &BasicProperties, body: Vec<u8>) -> (Message, Received) {
    let mut received = Received::default();
    let mut headers = Headers::new();
    let mut key = None;
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
        if let Some(v) = map.get(KEY_HEADER).and_then(as_text) {
            key = Some(v);
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
            if let Some(text) = as_text(value) {
                if let Err(e) = headers.insert(name, text) {
                    tracing::warn!(header = name, error = %e, "dropping a received header mailroom cannot carry");
                }
            }
        };
        let order: Vec<String> = match map.get(ORDER_HEADER) {
            Some(AMQPValue::FieldArray(order)) => {
                order.as_slice().iter().filter_map(as_text).collect()
            }
            Some(AMQPValue::LongString(text)) => std::str::from_utf8(text.as_bytes())
                .ok()
                .and_then(parse_order_text)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for name in order {
            if let Some(value) = map.get(name.as_str()) {
                add(&name, value);
            }
        }
        for (name, value) in map {
            add(name.as_str(), value);
        }
    }
    let id = properties
        .message_id()
        .as_ref()
        .and_then(|id| MessageId::parse(id.as_str()).ok())
        // A message published without a message-id (plain AMQP clients) gets a fresh one; it is
        // stable only for this delivery.
        .unwrap_or_else(MessageId::generate);
    let message = Message::from_parts(MessageParts {
        id,
        key: key.map(Into::into),
        payload: Bytes::from(body),
        headers,
        timestamp,
        delay: None,
    });
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
    fn foreign_headers_become_text_and_tables_are_left_out() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(-5));
        table.insert("b".into(), AMQPValue::Boolean(true));
        table.insert("t".into(), AMQPValue::FieldTable(FieldTable::default()));
        table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        let props = BasicProperties::default().with_headers(table);
        let (m, r) = decode(&props, b"x".to_vec());
        assert_eq!(m.headers().get("n"), Some("-5"));
        assert_eq!(m.headers().get("b"), Some("true"));
        assert!(!m.headers().contains("t"));
        assert!(!m.headers().contains(DELIVERY_COUNT_HEADER));
        assert_eq!(r.delivery_count, Some(2));
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
}
