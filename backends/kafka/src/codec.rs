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

use std::sync::Arc;

use bytes::Bytes;
use mailroom_core::wire::is_timestamp_header;
pub use mailroom_core::wire::{ATTEMPT_HEADER, ID_HEADER, TIMESTAMP_HEADER};
use mailroom_core::{Headers, Message, MessageId, MessageParts, Timestamp};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// A message's parts as a record carries them (the topic and the delivery opaque are the
/// producer's).
pub(crate) struct Record {
    pub payload: Bytes,
    pub key: Option<String>,
    pub timestamp: Option<i64>,
    pub headers: OwnedHeaders,
}

/// The record for `message`; `attempt` is set on a requeued copy.
pub(crate) fn encode(message: &Message, attempt: Option<u32>) -> Record {
    let timestamp = message.timestamp().map(|t| t.as_millis() as i64);
    let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 3);
    for (name, value) in message.headers() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let id = message.id().to_string();
    headers = headers.insert(Header {
        key: ID_HEADER,
        value: Some(&id),
    });
    if let Some(ts) = timestamp {
        headers = headers.insert(Header {
            key: TIMESTAMP_HEADER,
            value: Some(&ts.to_string()),
        });
    }
    if let Some(a) = attempt {
        headers = headers.insert(Header {
            key: ATTEMPT_HEADER,
            value: Some(&a.to_string()),
        });
    }
    Record {
        payload: message.payload().clone(),
        key: message.key().map(str::to_owned),
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
        for h in hs.iter() {
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
        assert_eq!(record.key.as_deref(), Some("k"));
    }
}
