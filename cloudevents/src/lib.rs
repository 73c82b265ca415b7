//! CloudEvents for mailroom: a [`Message`] as a CNCF CloudEvent (the `cloudevents-sdk` crate's
//! [`Event`]) and back, on every broker.
//!
//! ```
//! use mailroom_cloudevents::cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
//! use mailroom_cloudevents::{Binding, EventCodec};
//!
//! let event = EventBuilderV10::new()
//!     .id("order-42")
//!     .source("/shop/orders")
//!     .ty("com.example.order.placed")
//!     .data("application/json", serde_json::json!({"total": 12}))
//!     .build()
//!     .unwrap();
//! let codec = EventCodec::binary(Binding::Kafka);
//! let message = codec.encode(event.clone()).unwrap();
//! assert_eq!(message.headers().get("ce_id"), Some("order-42"));
//! assert_eq!(message.headers().get("content-type"), Some("application/json"));
//! let back = codec.decode(&message).unwrap();
//! assert_eq!(back.id(), "order-42");
//! ```
//!
//! **Binary mode** puts each attribute in a header named by the broker's [`Binding`] (`ce_id`
//! on Kafka, SQS and memory, `cloudEvents:id` on RabbitMQ), `datacontenttype` in the
//! `content-type` header (RabbitMQ: the AMQP `content_type` property) and the data in the
//! payload. **Structured mode** puts the whole event, in the JSON event format, in the payload
//! with the content type `application/cloudevents+json`. [`EventCodec::decode`] reads either,
//! telling them apart as the bindings say.
//!
//! The message's id is the event's `id` (when it is a valid message id), its timestamp the
//! event's `time` to the millisecond, and its key whatever the application gives
//! ([`EventCodec::encode_with_key`]) or, opted in, the `partitionkey` extension. The mapping per
//! broker, and how a service in another language reads it, is in `docs/wire/`.
//!
//! What does not survive binary mode, as with the SDK's own Kafka binding: extension values
//! come back as strings (a header is text), data comes back as `Data::Binary`, and an event
//! with empty data reads back as one without data.

mod binding;
mod decode;
mod encode;
mod error;

pub use binding::{Binding, CONTENT_TYPE_HEADER};
pub use cloudevents;
pub use cloudevents::Event;
pub use encode::STRUCTURED_JSON;
pub use error::CloudEventError;

use mailroom_core::Message;

/// The partitioning extension whose value becomes the message key with
/// [`EventCodec::partition_key_as_key`].
pub const PARTITION_KEY_EXTENSION: &str = "partitionkey";

/// How an event is written into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Attributes as headers, data as the payload.
    Binary,
    /// The event as JSON in the payload.
    Structured,
}

/// Converts events to messages for one binding, and messages back to events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCodec {
    binding: Binding,
    mode: Mode,
    partition_key_as_key: bool,
}

impl EventCodec {
    /// Binary content mode on `binding`.
    pub fn binary(binding: Binding) -> Self {
        EventCodec {
            binding,
            mode: Mode::Binary,
            partition_key_as_key: false,
        }
    }

    /// Structured content mode (JSON event format) on `binding`.
    pub fn structured(binding: Binding) -> Self {
        EventCodec {
            mode: Mode::Structured,
            ..Self::binary(binding)
        }
    }

    /// The Kafka binding's opt-in key mapper: the `partitionkey` extension, if the event has
    /// one, becomes the message key (it stays in the event too).
    pub fn partition_key_as_key(mut self) -> Self {
        self.partition_key_as_key = true;
        self
    }

    /// The binding this codec names headers for.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// The mode [`encode`](Self::encode) writes.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The event as a message (key: the `partitionkey` extension if opted in, else none).
    pub fn encode(&self, event: Event) -> Result<Message, CloudEventError> {
        let key = if self.partition_key_as_key {
            event
                .extension(PARTITION_KEY_EXTENSION)
                .map(|v| v.to_string())
        } else {
            None
        };
        self.encode_keyed(event, key.as_deref())
    }

    /// The event as a message with this key (the Kafka binding's "user provided record key").
    pub fn encode_with_key(&self, event: Event, key: &str) -> Result<Message, CloudEventError> {
        self.encode_keyed(event, Some(key))
    }

    fn encode_keyed(&self, event: Event, key: Option<&str>) -> Result<Message, CloudEventError> {
        match self.mode {
            Mode::Binary => encode::binary(event, self.binding, key),
            Mode::Structured => encode::structured(&event, key),
        }
    }

    /// The event a message carries, in either mode; a typed error naming what is wrong if it is
    /// not a valid CloudEvent. Headers that are not attributes (application headers,
    /// `traceparent`) are not part of the event.
    pub fn decode(&self, message: &Message) -> Result<Event, CloudEventError> {
        decode::event(message, self.binding)
    }

    /// The same message with its attribute headers renamed for another binding (a pipeline
    /// bridging RabbitMQ and Kafka in binary mode); other headers, payload, id, key and
    /// timestamp are kept.
    pub fn rebind(
        message: Message,
        from: Binding,
        to: Binding,
    ) -> Result<Message, CloudEventError> {
        // Every header, of every form and repeated or not, and a key that is not UTF-8 too.
        let (mut parts, binary_key) = message.into_parts_and_binary_key();
        let mut headers = mailroom_core::Headers::new();
        for (name, value) in parts.headers.values() {
            let name = match from.attribute_of(name) {
                Some(attribute) => to.header_name(attribute),
                None => name.to_owned(),
            };
            headers
                .append(name, value.clone())
                .map_err(CloudEventError::Message)?;
        }
        parts.headers = headers;
        Ok(Message::from_parts_and_binary_key(parts, binary_key))
    }
}

#[cfg(test)]
mod tests;
