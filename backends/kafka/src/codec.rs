//! A mailroom [`Message`] as a Kafka record, and back.
//!
//! | mailroom        | Kafka record                                                      |
//! |-----------------|-------------------------------------------------------------------|
//! | payload         | value                                                             |
//! | key             | key (it picks the partition)                                      |
//! | headers         | headers, in order, each value UTF-8                               |
//! | id              | `x-mailroom-id` header                                            |
//! | timestamp       | record timestamp and `x-mailroom-timestamp-ms` header             |
//! | attempt (>1)    | `x-mailroom-attempt` header on a requeued copy                    |
//!
//! The `x-mailroom-*` headers are taken off on receive, so a message arrives exactly as it was
//! sent. Records from other producers get the id `kafka:TOPIC:PARTITION:OFFSET` (stable across
//! redeliveries) and the record's timestamp. The timestamp header's name before this release,
//! `x-mailroom-timestamp`, is still read ([`mailroom_core::wire::LEGACY_TIMESTAMP_HEADERS`]).

use std::fmt::{self, Write as _};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use mailroom_core::message::MAX_ID_BYTES;
use mailroom_core::wire::is_timestamp_header;
pub use mailroom_core::wire::{ATTEMPT_HEADER, ID_HEADER, TIMESTAMP_HEADER};
use mailroom_core::{Headers, Message, MessageId, MessageParts, Timestamp};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// A message's parts as a record carries them (the topic and the delivery opaque are the
/// producer's), borrowed from the message.
pub(crate) struct Record<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a str>,
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

/// The record for `message`; `attempt` is set on a requeued copy.
pub(crate) fn encode(message: &Message, attempt: Option<u32>) -> Record<'_> {
    let timestamp = message.timestamp().map(|t| t.as_millis() as i64);
    let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 3);
    for (name, value) in message.headers() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    headers = with_text(headers, ID_HEADER, message.id());
    if let Some(ts) = timestamp {
        headers = with_text(headers, TIMESTAMP_HEADER, ts);
    }
    if let Some(a) = attempt {
        headers = with_text(headers, ATTEMPT_HEADER, a);
    }
    Record {
        payload: message.payload(),
        key: message.key(),
        timestamp,
        headers,
    }
}

/// A received record's mailroom parts, from its headers.
#[derive(Default)]
struct Internal {
    id: Option<MessageId>,
    timestamp: Option<Timestamp>,
    attempt: Option<u32>,
}

impl Internal {
    /// Take `name` if it is one of mailroom's own headers; false for an application header.
    fn take(&mut self, name: &str, value: &str) -> bool {
        match name {
            ID_HEADER => self.id = MessageId::parse(value).ok(),
            ATTEMPT_HEADER => self.attempt = Some(value.parse().unwrap_or(1).max(1)),
            name if is_timestamp_header(name) => {
                self.timestamp = value.parse().ok().map(Timestamp::from_millis)
            }
            _ => return false,
        }
        true
    }
}

/// A Kafka record as a mailroom message, and its attempt (internal headers are stripped).
pub(crate) fn decode(m: &impl rdkafka::Message) -> (Message, u32) {
    let mut headers = Headers::new();
    let mut internal = Internal::default();
    if let Some(hs) = m.headers() {
        for i in 0..hs.count() {
            // rdkafka reads a header's name with `CStr::to_str().unwrap()`: a name that is not
            // UTF-8 (the protocol carries bytes, and other clients write any) panicked here, in
            // the consumer. Such a header is left out with a warning; the record is delivered.
            let Ok(Some(h)) = std::panic::catch_unwind(AssertUnwindSafe(|| hs.try_get(i))) else {
                tracing::warn!(
                    index = i,
                    "header of a received record has a name that is not UTF-8; dropped"
                );
                continue;
            };
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            if internal.take(h.key, &value) {
                continue;
            }
            if let Err(e) = headers.insert(h.key, value) {
                tracing::warn!(error = %e, "header of a received record dropped");
            }
        }
    }
    let from_mailroom = internal.id.is_some();
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
    let message = Message::from_parts(MessageParts {
        id,
        key: m
            .key()
            .map(|k| Arc::from(String::from_utf8_lossy(k).as_ref())),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
        timestamp,
        delay: None,
    });
    (message, internal.attempt.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (message, attempt) = decode(&record);
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
        let record = encode(&message, Some(3));
        let names: Vec<&str> = record.headers.iter().map(|h| h.key).collect();
        assert_eq!(names, ["a", ID_HEADER, TIMESTAMP_HEADER, ATTEMPT_HEADER]);
        assert_eq!(record.timestamp, Some(7));
        assert_eq!(record.key, Some("k"));
        let values: Vec<&[u8]> = record.headers.iter().filter_map(|h| h.value).collect();
        assert_eq!(
            values,
            [&b"1"[..], message.id().to_string().as_bytes(), b"7", b"3"]
        );
    }
}
