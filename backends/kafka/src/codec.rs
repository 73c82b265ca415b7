//! A mailroom [`Message`] as a Kafka record, and back.
//!
//! | mailroom        | Kafka record                                                      |
//! |-----------------|-------------------------------------------------------------------|
//! | payload         | value                                                             |
//! | key             | key, as bytes (it picks the partition); a key that is not UTF-8   |
//! |                 | arrives as [`Message::key_bytes`]                                 |
//! | headers         | headers, in order, names repeated as they were; a text value is   |
//! |                 | its UTF-8 bytes, a bytes value the bytes, a null value null       |
//! | id              | `x-mailroom-id` header                                            |
//! | timestamp       | record timestamp and `x-mailroom-timestamp-ms` header             |
//! | attempt (>1)    | `x-mailroom-attempt` header on a requeued copy                    |
//! | routing key     | `x-mailroom-routing-key` header, sent to an exchange with a non-empty key |
//!
//! The `x-mailroom-*` headers are taken off on receive, so a message arrives exactly as it was
//! sent. Records from other producers get the id `kafka:TOPIC:PARTITION:OFFSET` (stable across
//! redeliveries) and the record's timestamp; an `x-mailroom-id` header mailroom cannot accept
//! (not UTF-8, a control character, too long) gets an id derived from its bytes, and the
//! original is kept as `x-mailroom-original-id` ([`mailroom_core::wire::accept_id`]).
//!
//! Kafka header values are untyped bytes: on receive, bytes that are UTF-8 are a text value,
//! others a bytes value. Typed values (integers, tables, ... as RabbitMQ carries them) have no
//! Kafka form; a send of one is refused with an `Encode` error naming the header ([`check`]).
//! The timestamp header's name before this release, `x-mailroom-timestamp`, is still read
//! ([`mailroom_core::wire::LEGACY_TIMESTAMP_HEADERS`]).

use std::fmt::{self, Write as _};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mailroom_core::message::MAX_ID_BYTES;
use mailroom_core::wire::{accept_id, is_timestamp_header, Dropped};
pub use mailroom_core::wire::{ATTEMPT_HEADER, ID_HEADER, ROUTING_KEY_HEADER, TIMESTAMP_HEADER};
use mailroom_core::{
    Destination, Error, ErrorKind, HeaderValue, Headers, Message, MessageId, MessageParts, Result,
    Timestamp,
};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// A message's parts as a record carries them (the topic and the delivery opaque are the
/// producer's), borrowed from the message.
pub(crate) struct Record<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub timestamp: Option<i64>,
    pub headers: OwnedHeaders,
}

/// Text formatted into a buffer on the stack, so that the id, timestamp and attempt headers
/// cost no allocation of their own (librdkafka copies each header anyway).
struct StackText {
    buf: [u8; MAX_ID_BYTES + 1],
    len: usize,
}

impl StackText {
    /// `value` as text, or `None` if it does not fit (an id never exceeds `MAX_ID_BYTES`).
    fn of(value: impl fmt::Display) -> Option<Self> {
        let mut text = StackText {
            buf: [0; MAX_ID_BYTES + 1],
            len: 0,
        };
        write!(text, "{value}").ok()?;
        Some(text)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `headers` with one more header whose value is `value` as text.
fn with_text(headers: OwnedHeaders, name: &str, value: impl fmt::Display) -> OwnedHeaders {
    match StackText::of(&value) {
        Some(text) => headers.insert(Header {
            key: name,
            value: Some(text.as_bytes()),
        }),
        None => headers.insert(Header {
            key: name,
            value: Some(&value.to_string()),
        }),
    }
}

/// The Kafka form of a header value: its bytes, or null; `None` for a form Kafka cannot carry.
fn wire_value(value: &HeaderValue) -> Option<Option<&[u8]>> {
    match value {
        HeaderValue::Null => Some(None),
        other => other.as_bytes().map(Some),
    }
}

/// Refuse, before any I/O, a message with a header value Kafka has no form for (a typed AMQP
/// value): sending it as text would alter it without a word.
pub(crate) fn check(message: &Message) -> Result<()> {
    if message.headers().is_all_text() {
        return Ok(());
    }
    match message
        .headers()
        .values()
        .find(|(_, v)| wire_value(v).is_none())
    {
        None => Ok(()),
        Some((name, value)) => Err(Error::new(
            ErrorKind::Encode,
            format!(
                "header '{name}' of message {} is a {} value; Kafka header values are bytes, \
                 so only text, bytes and null values can be sent",
                message.id(),
                value.type_name()
            ),
        )),
    }
}

/// What a record carries besides the message itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamps<'a> {
    /// Set on a requeued copy.
    pub attempt: Option<u32>,
    /// The routing key of a send to an exchange, which consumers match their bindings against.
    pub routing_key: Option<&'a str>,
}

impl<'a> Stamps<'a> {
    /// A copy's attempt, no routing key.
    pub fn attempt(attempt: Option<u32>) -> Self {
        Stamps {
            attempt,
            routing_key: None,
        }
    }

    /// What a send to `destination` carries: an exchange's non-empty routing key.
    pub fn to(destination: &'a Destination) -> Self {
        let routing_key = match destination {
            Destination::Exchange { routing_key, .. } if !routing_key.is_empty() => {
                Some(&**routing_key)
            }
            _ => None,
        };
        Stamps {
            attempt: None,
            routing_key,
        }
    }
}

/// The record for `message` with `stamps`. A value [`check`] refuses is left out, so call it
/// first.
pub(crate) fn encode<'m>(message: &'m Message, stamps: Stamps<'_>) -> Record<'m> {
    let Stamps {
        attempt,
        routing_key,
    } = stamps;
    let timestamp = message.timestamp().map(|t| t.as_millis() as i64);
    let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 3);
    for (name, value) in message.headers().values() {
        if let Some(value) = wire_value(value) {
            headers = headers.insert(Header { key: name, value });
        }
    }
    headers = with_text(headers, ID_HEADER, message.id());
    if let Some(ts) = timestamp {
        headers = with_text(headers, TIMESTAMP_HEADER, ts);
    }
    if let Some(a) = attempt {
        headers = with_text(headers, ATTEMPT_HEADER, a);
    }
    if let Some(key) = routing_key {
        headers = headers.insert(Header {
            key: ROUTING_KEY_HEADER,
            value: Some(key),
        });
    }
    Record {
        payload: message.payload(),
        key: message.key_bytes(),
        timestamp,
        headers,
    }
}

/// Copies of received payloads, carved out of shared chunks: a consumer makes one copy per
/// record, and a `Bytes` of its own cost two allocations and two frees per message (the buffer,
/// then the shared count its first clone promotes it to; the settle handle keeps a clone to
/// requeue or dead-letter the message). A chunk costs those once per [`CHUNK_BYTES`], and
/// clones of a payload only count references.
///
/// The trade-off: a payload kept alive keeps its whole chunk alive, so payloads above
/// [`MAX_POOLED_BYTES`] get a buffer of their own, which bounds what one small message can
/// hold on to at [`CHUNK_BYTES`].
#[derive(Default)]
pub(crate) struct PayloadArena {
    chunk: BytesMut,
}

/// Size of each shared chunk.
const CHUNK_BYTES: usize = 16 * 1024;
/// Largest payload copied into a chunk.
const MAX_POOLED_BYTES: usize = 2 * 1024;

impl PayloadArena {
    /// A copy of `payload`.
    pub(crate) fn copy(&mut self, payload: &[u8]) -> Bytes {
        if payload.is_empty() {
            return Bytes::new();
        }
        if payload.len() > MAX_POOLED_BYTES {
            return Bytes::copy_from_slice(payload);
        }
        // After a split the chunk is empty and its capacity is what is left of it; a fresh
        // chunk replaces it when the payload does not fit (never `reserve`, which could copy
        // or grow a shared one).
        if self.chunk.capacity() < payload.len() {
            self.chunk = BytesMut::with_capacity(CHUNK_BYTES);
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

/// A received record's mailroom parts, from its headers.
#[derive(Default)]
struct Internal {
    id: Option<MessageId>,
    timestamp: Option<Timestamp>,
    attempt: Option<u32>,
    routing_key: Option<String>,
}

impl Internal {
    /// Take `name` if it is one of mailroom's own headers; false for an application header.
    /// The id is taken by `decode` itself, from the raw bytes of the first `x-mailroom-id`.
    fn take(&mut self, name: &str, value: &str) -> bool {
        match name {
            ATTEMPT_HEADER => self.attempt = Some(value.parse().unwrap_or(1).max(1)),
            ROUTING_KEY_HEADER => self.routing_key = Some(value.to_owned()),
            name if is_timestamp_header(name) => {
                self.timestamp = value.parse().ok().map(Timestamp::from_millis)
            }
            _ => return false,
        }
        true
    }
}

/// A received record's message and what it carried besides.
pub(crate) struct Decoded {
    pub message: Message,
    pub attempt: u32,
    /// The routing key it was sent to an exchange with (`None`: empty, or sent to a queue).
    pub routing_key: Option<String>,
}

/// A Kafka record as a mailroom message, its attempt and its routing key (internal headers are
/// stripped).
///
/// Names and values are kept as the record has them: repeated names in order, values that are
/// not UTF-8 as bytes, null values as null. A header mailroom cannot hold (a name that is empty,
/// too long or has a control character; a value over the size limit; a key over the key limit)
/// is left out with a warning, and named in the `x-mailroom-dropped` header
/// ([`mailroom_core::wire::DROPPED_HEADER`]) so that the application sees the message was not
/// read whole.
pub(crate) fn decode(m: &impl rdkafka::Message) -> Decoded {
    decode_with(m, None)
}

/// [`decode`], the payload copied into `arena` when one is given (a consumer's).
pub(crate) fn decode_with(m: &impl rdkafka::Message, arena: Option<&mut PayloadArena>) -> Decoded {
    let mut headers = Headers::new();
    let mut internal = Internal::default();
    let mut raw_id = None;
    let mut dropped = Dropped::default();
    if let Some(hs) = m.headers() {
        for i in 0..hs.count() {
            // rdkafka reads a header's name with `CStr::to_str().unwrap()`: a name that is not
            // UTF-8 (the protocol carries bytes, and other clients write any) panicked here, in
            // the consumer. Such a header is left out with a warning and named in the dropped
            // marker; the record is delivered.
            let Ok(Some(h)) = std::panic::catch_unwind(AssertUnwindSafe(|| hs.try_get(i))) else {
                tracing::warn!(
                    index = i,
                    "header of a received record has a name that is not UTF-8; dropped"
                );
                dropped.header("<not UTF-8>");
                continue;
            };
            if h.key == ID_HEADER && internal.id.is_none() {
                // Kept raw: an id mailroom cannot accept gets one derived from these bytes.
                raw_id = Some(h.value.unwrap_or_default());
                internal.id = std::str::from_utf8(h.value.unwrap_or_default())
                    .ok()
                    .and_then(|v| MessageId::parse(v).ok());
                continue;
            }
            // One UTF-8 check per value: the text found here is the value kept.
            let value = match h.value {
                None => HeaderValue::Null,
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) if internal.take(h.key, text) => continue,
                    Ok(text) => HeaderValue::Text(text.to_owned()),
                    Err(_) => HeaderValue::from_wire_bytes(bytes),
                },
            };
            if let Err(e) = headers.append(h.key, value) {
                tracing::warn!(error = %e, "header of a received record dropped");
                dropped.header(h.key);
            }
        }
    }
    let from_mailroom = internal.id.is_some();
    if let (None, Some(raw)) = (&internal.id, raw_id) {
        // A mailroom-looking record whose id is unacceptable: stable, with the original kept.
        internal.id = Some(accept_id(raw, &mut headers));
    }
    let id = internal.id.unwrap_or_else(|| {
        // Records from other producers get an id that is stable across redeliveries.
        MessageId::parse(&format!(
            "kafka:{}:{}:{}",
            m.topic(),
            m.partition(),
            m.offset()
        ))
        .unwrap_or_else(|_| MessageId::generate())
    });
    let timestamp = if from_mailroom {
        internal.timestamp
    } else {
        m.timestamp()
            .to_millis()
            .filter(|t| *t >= 0)
            .map(|t| Timestamp::from_millis(t as u64))
    };
    // A key longer than mailroom's limit cannot be one; it is left off loudly rather than cut.
    let key = m.key().filter(|k| {
        let fits = k.len() <= mailroom_core::message::MAX_KEY_BYTES;
        if !fits {
            tracing::warn!(len = k.len(), "record key over the key limit left off");
            dropped.key();
        }
        fits
    });
    dropped.mark(&mut headers);
    // A text key is made `Arc<str>` straight away: through the binary-key path it would be
    // copied twice.
    let (key, binary_key) = match key.map(std::str::from_utf8) {
        Some(Ok(text)) => (Some(Arc::from(text)), None),
        Some(Err(_)) => (None, key.map(Arc::from)),
        None => (None, None),
    };
    let parts = MessageParts {
        id,
        key,
        payload: match arena {
            Some(arena) => arena.copy(m.payload().unwrap_or_default()),
            None => Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        },
        headers,
        timestamp,
        delay: None,
    };
    let message = Message::from_parts_and_binary_key(parts, binary_key);
    Decoded {
        message,
        attempt: internal.attempt.unwrap_or(1),
        routing_key: internal.routing_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_payloads_are_exact_copies_that_share_chunks_and_clone_without_copying() {
        let mut arena = PayloadArena::default();
        let a = arena.copy(b"first");
        let b = arena.copy(b"second");
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        // Consecutive small payloads sit side by side in one chunk.
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));
        let kept = b.clone();
        assert_eq!(kept.as_ptr(), b.as_ptr(), "a clone shares the bytes");
        drop(b);
        assert_eq!(&kept[..], b"second");
        assert!(arena.copy(b"").is_empty());
        // A chunk that is full is replaced; earlier payloads stay as they were.
        let big = vec![7u8; MAX_POOLED_BYTES];
        let copies: Vec<Bytes> = (0..2 * CHUNK_BYTES / MAX_POOLED_BYTES + 1)
            .map(|_| arena.copy(&big))
            .collect();
        assert!(copies.iter().all(|c| c[..] == big[..]));
        assert_eq!((&a[..], &kept[..]), (&b"first"[..], &b"second"[..]));
        // A payload above the pooled size gets a buffer of its own.
        let huge = vec![9u8; MAX_POOLED_BYTES + 1];
        let own = arena.copy(&huge);
        let next = arena.copy(b"x");
        assert_eq!(&own[..], &huge[..]);
        assert_ne!(next.as_ptr(), own.as_ptr().wrapping_add(own.len()));
    }

    #[test]
    fn internal_headers_are_recognised_under_old_and_new_names() {
        let mut internal = Internal::default();
        assert!(internal.take("x-mailroom-timestamp", "1700000000000"));
        assert_eq!(
            internal.timestamp,
            Some(Timestamp::from_millis(1_700_000_000_000))
        );
        let mut internal = Internal::default();
        assert!(internal.take(TIMESTAMP_HEADER, "42"));
        assert_eq!(internal.timestamp, Some(Timestamp::from_millis(42)));
        assert!(internal.take(ATTEMPT_HEADER, "0"));
        assert_eq!(internal.attempt, Some(1), "an attempt is at least 1");
        assert!(!internal.take("app-header", "v"));
    }

    #[test]
    fn a_record_with_the_old_timestamp_name_decodes_with_its_timestamp() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: ID_HEADER,
                value: Some(&MessageId::generate().to_string()),
            })
            .insert(Header {
                key: "x-mailroom-timestamp",
                value: Some("1700000000000"),
            })
            .insert(Header {
                key: "app",
                value: Some("v"),
            });
        let record = rdkafka::message::OwnedMessage::new(
            Some(b"payload".to_vec()),
            Some(b"k".to_vec()),
            "orders".into(),
            rdkafka::Timestamp::CreateTime(5),
            0,
            9,
            Some(headers),
        );
        let Decoded {
            message,
            attempt,
            routing_key,
        } = decode(&record);
        assert_eq!(routing_key, None);
        assert_eq!(
            message.timestamp(),
            Some(Timestamp::from_millis(1_700_000_000_000))
        );
        assert_eq!(message.headers().iter().collect::<Vec<_>>(), [("app", "v")]);
        assert_eq!(message.key(), Some("k"));
        assert_eq!(attempt, 1);
    }

    #[test]
    fn an_encoded_record_carries_the_new_names() {
        let message = Message::builder("p")
            .key("k")
            .timestamp(Timestamp::from_millis(7))
            .header("a", "1")
            .build()
            .unwrap();
        let record = encode(&message, Stamps::attempt(Some(3)));
        let names: Vec<&str> = record.headers.iter().map(|h| h.key).collect();
        assert_eq!(names, ["a", ID_HEADER, TIMESTAMP_HEADER, ATTEMPT_HEADER]);
        assert_eq!(record.timestamp, Some(7));
        assert_eq!(record.key, Some(&b"k"[..]));
        let values: Vec<&[u8]> = record.headers.iter().filter_map(|h| h.value).collect();
        assert_eq!(
            values,
            [&b"1"[..], message.id().to_string().as_bytes(), b"7", b"3"]
        );
    }
    #[test]
    fn the_routing_key_of_an_exchange_send_travels_and_is_stripped_on_receive() {
        let message = Message::builder("p").header("a", "1").build().unwrap();
        let to = Destination::exchange("events", "order.created");
        let record = encode(&message, Stamps::to(&to));
        let owned = rdkafka::message::OwnedMessage::new(
            Some(record.payload.to_vec()),
            None,
            "events".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            1,
            Some(record.headers),
        );
        let decoded = decode(&owned);
        assert_eq!(decoded.routing_key.as_deref(), Some("order.created"));
        assert_eq!(
            decoded.message.headers().iter().collect::<Vec<_>>(),
            [("a", "1")]
        );
        // The empty key and a queue send carry no header: absent reads as the empty key.
        for quiet in [Destination::exchange("events", ""), Destination::queue("q")] {
            let record = encode(&message, Stamps::to(&quiet));
            assert!(record.headers.iter().all(|h| h.key != ROUTING_KEY_HEADER));
        }
    }
}
