//! Typed payloads: send a `T: Serialize` as JSON, decode a delivery into `T`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, MessageBuilder};

/// The content-type header name.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The content type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A message builder whose payload is `value` as JSON, with the content-type header set.
pub fn builder<T: Serialize + ?Sized>(value: &T) -> Result<MessageBuilder> {
    let payload = serde_json::to_vec(value)
        .map_err(|e| Error::new(ErrorKind::Encode, "cannot encode value as JSON").with_source(e))?;
    Ok(Message::builder(payload).header(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE))
}

/// A message whose payload is `value` as JSON.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Message> {
    builder(value)?.build()
}

/// Decode a message's JSON payload. The error says where decoding failed; the message itself is
/// untouched, so the caller still holds the raw delivery to dead-letter.
pub fn decode<T: DeserializeOwned>(message: &Message) -> Result<T> {
    if let Some(ct) = message.headers().get(CONTENT_TYPE_HEADER) {
        if !ct.starts_with(JSON_CONTENT_TYPE) {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "message {} has content-type {ct:?}, not {JSON_CONTENT_TYPE}",
                    message.id()
                ),
            ));
        }
    }
    serde_json::from_slice(message.payload()).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!(
                "message {} is not a valid {}",
                message.id(),
                std::any::type_name::<T>()
            ),
        )
        .with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct OrderPlaced {
        order: u64,
        total_cents: u64,
    }

    #[test]
    fn round_trips_and_sets_content_type() {
        let event = OrderPlaced {
            order: 7,
            total_cents: 1250,
        };
        let msg = encode(&event).unwrap();
        assert_eq!(msg.headers().get("content-type"), Some("application/json"));
        assert_eq!(decode::<OrderPlaced>(&msg).unwrap(), event);
    }

    #[test]
    fn decode_failure_is_typed_and_keeps_the_message() {
        let msg = Message::new("{not json");
        let err = decode::<OrderPlaced>(&msg).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.message().contains("OrderPlaced"));
        assert_eq!(msg.payload().as_ref(), b"{not json");
    }
}
