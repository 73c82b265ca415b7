//! An event as a mailroom message: binary mode (attributes as headers, data as the payload)
//! or structured mode (the whole event as JSON in the payload).
//!
//! Binary mode goes through the SDK's own `BinaryDeserializer for Event`, so attribute values
//! are written in the SDK's canonical string form (a `time` as RFC 3339), the same text its
//! Kafka binding writes.

use bytes::Bytes;
use cloudevents::event::SpecVersion;
use cloudevents::message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue};
use cloudevents::{AttributesReader, Event};
use mailroom_core::{Headers, Message, MessageId, MessageParts, Timestamp};

use crate::binding::{Binding, CONTENT_TYPE_HEADER, SPECVERSION};
use crate::error::CloudEventError;

/// The content type of a structured-mode message in the JSON event format.
pub const STRUCTURED_JSON: &str = "application/cloudevents+json; charset=UTF-8";

/// Collects the SDK's binary-mode visit of an event as mailroom headers and a payload.
struct HeaderWriter {
    binding: Binding,
    headers: Headers,
    /// Extensions come out of a hash map; sorted at the end so the headers (and which of them
    /// get one of SQS's ten attribute slots) do not change from run to run.
    extensions: Vec<(String, String)>,
    data: Option<Vec<u8>>,
}

fn sdk_error(e: mailroom_core::Error) -> cloudevents::message::Error {
    cloudevents::message::Error::Other {
        source: Box::new(e),
    }
}

impl HeaderWriter {
    fn insert(&mut self, attribute: &str, value: String) -> cloudevents::message::Result<()> {
        self.headers
            .insert(self.binding.header_name(attribute), value)
            .map_err(sdk_error)
    }

    fn finish(mut self) -> cloudevents::message::Result<(Headers, Option<Vec<u8>>)> {
        self.extensions.sort();
        for (name, value) in std::mem::take(&mut self.extensions) {
            self.insert(&name, value)?;
        }
        Ok((self.headers, self.data))
    }
}

impl BinarySerializer<(Headers, Option<Vec<u8>>)> for HeaderWriter {
    fn set_spec_version(mut self, version: SpecVersion) -> cloudevents::message::Result<Self> {
        self.insert(SPECVERSION, version.to_string())?;
        Ok(self)
    }

    fn set_attribute(
        mut self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        self.insert(name, value.to_string())?;
        Ok(self)
    }

    fn set_extension(
        mut self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        self.extensions.push((name.to_owned(), value.to_string()));
        Ok(self)
    }

    fn end_with_data(
        mut self,
        bytes: Vec<u8>,
    ) -> cloudevents::message::Result<(Headers, Option<Vec<u8>>)> {
        self.data = Some(bytes);
        self.finish()
    }

    fn end(self) -> cloudevents::message::Result<(Headers, Option<Vec<u8>>)> {
        self.finish()
    }
}

/// The message's id, timestamp and key from the event: the id is the event's `id` when it is a
/// valid message id (so a broker's deduplication and mailroom's idempotence work per event),
/// else a fresh one; the timestamp is `time` to the millisecond.
fn assemble(
    event_id: &str,
    time_ms: Option<i64>,
    key: Option<&str>,
    payload: Vec<u8>,
    headers: Headers,
) -> Result<Message, CloudEventError> {
    let key = match key {
        Some(k) => {
            // The builder validates the key's length; reuse it rather than repeat the rule.
            Message::builder(Bytes::new())
                .key(k)
                .build()
                .map_err(CloudEventError::Message)?;
            Some(k.into())
        }
        None => None,
    };
    Ok(Message::from_parts(MessageParts {
        id: MessageId::parse(event_id).unwrap_or_else(|_| MessageId::generate()),
        key,
        payload: Bytes::from(payload),
        headers,
        timestamp: time_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Timestamp::from_millis),
        delay: None,
    }))
}

/// `event` in binary mode: attributes and extensions as headers, data as the payload (no data:
/// an empty payload).
pub(crate) fn binary(
    event: Event,
    binding: Binding,
    key: Option<&str>,
) -> Result<Message, CloudEventError> {
    let id = event.id().to_owned();
    let time = event.time().map(|t| t.timestamp_millis());
    let writer = HeaderWriter {
        binding,
        headers: Headers::new(),
        extensions: Vec::new(),
        data: None,
    };
    let (headers, data) = event.deserialize_binary(writer).map_err(|e| match e {
        cloudevents::message::Error::Other { source } => {
            match source.downcast::<mailroom_core::Error>() {
                Ok(inner) => CloudEventError::Message(*inner),
                Err(source) => CloudEventError::Sdk(cloudevents::message::Error::Other { source }),
            }
        }
        other => CloudEventError::Sdk(other),
    })?;
    assemble(&id, time, key, data.unwrap_or_default(), headers)
}

/// `event` in structured mode: the JSON event format as the payload, its media type as the
/// content type.
pub(crate) fn structured(event: &Event, key: Option<&str>) -> Result<Message, CloudEventError> {
    let body = serde_json::to_vec(event).map_err(|e| CloudEventError::InvalidStructured {
        reason: e.to_string(),
    })?;
    let mut headers = Headers::new();
    headers
        .insert(CONTENT_TYPE_HEADER, STRUCTURED_JSON)
        .map_err(CloudEventError::Message)?;
    assemble(
        event.id(),
        event.time().map(|t| t.timestamp_millis()),
        key,
        body,
        headers,
    )
}
