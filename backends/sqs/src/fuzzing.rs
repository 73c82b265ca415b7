//! Entry points for the fuzz targets in `fuzz/` (not a public API; the `fuzzing` feature).
//!
//! The input is an SQS message in [`FuzzInput`]'s format: body, message id, system attributes
//! and message attributes (string or binary, any data type, including mailroom's own
//! `mailroom.meta` and the `mailroom.encoding` body marker), as ReceiveMessage can return them
//! from any sender. It is built into the SDK's message type and decoded by [`crate::codec`] as
//! the consumer decodes it.

use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    Message as SqsMessage, MessageAttributeValue, MessageSystemAttributeName,
};
use mailroom_core::fuzzing::{FuzzInput, FuzzOutput};
use mailroom_core::{Message, Result};

use crate::codec;

/// Attributes of each kind at most: SQS sends at most 10 message attributes.
const MAX_ATTRIBUTES: usize = 16;

/// Decode the SQS message `input` describes, as the consumer does.
pub fn decode_message(input: &[u8]) -> Message {
    let mut r = FuzzInput::new(input);
    let flags = r.u8();
    let mut msg = SqsMessage::builder();
    let body = r.text();
    if flags & 1 != 0 {
        msg = msg.body(body);
    }
    let id = r.text();
    if flags & 2 != 0 {
        msg = msg.message_id(id);
    }
    for _ in 0..usize::from(r.u8()).min(MAX_ATTRIBUTES) {
        let name = MessageSystemAttributeName::from(r.text().as_str());
        msg = msg.attributes(name, r.text());
    }
    for _ in 0..usize::from(r.u8()).min(MAX_ATTRIBUTES) {
        let name = r.text();
        let data_type = r.text();
        let kind = r.u8();
        let text = r.text();
        let binary = r.bytes();
        let mut value = MessageAttributeValue::builder().data_type(data_type);
        if kind & 1 != 0 {
            value = value.string_value(text);
        }
        if kind & 2 != 0 {
            value = value.binary_value(Blob::new(binary));
        }
        // Only a missing data type fails to build, and one is always set.
        if let Ok(value) = value.build() {
            msg = msg.message_attributes(name, value);
        }
    }
    codec::decode(&msg.build())
}

/// The input [`decode_message`] reads back as what a send of `message` puts on a queue (`fifo`
/// or not; for the seed corpus), with `sent_at` as its SentTimestamp.
pub fn message_input(message: &Message, fifo: bool, sent_at: u64) -> Result<Vec<u8>> {
    let encoded = codec::encode(message, fifo, 1 << 20)?;
    let mut system = vec![
        (
            MessageSystemAttributeName::SentTimestamp,
            sent_at.to_string(),
        ),
        (
            MessageSystemAttributeName::ApproximateReceiveCount,
            "1".to_owned(),
        ),
    ];
    if let Some(group) = &encoded.group_id {
        system.push((MessageSystemAttributeName::MessageGroupId, group.clone()));
    }
    let mut out = FuzzOutput::new();
    out.u8(3)
        .bytes(encoded.body.as_bytes())
        .bytes(message.id().to_string().as_bytes())
        .u8(system.len() as u8);
    for (name, value) in &system {
        out.bytes(name.as_str().as_bytes()).bytes(value.as_bytes());
    }
    // Sorted, so that a seed's bytes do not depend on the map's order.
    let attributes: HashMap<_, _> = encoded.attributes;
    let mut names: Vec<&String> = attributes.keys().collect();
    names.sort();
    out.u8(names.len() as u8);
    for name in names {
        let value = &attributes[name];
        let kind = u8::from(value.string_value().is_some())
            | u8::from(value.binary_value().is_some()) << 1;
        out.bytes(name.as_bytes())
            .bytes(value.data_type().as_bytes())
            .u8(kind)
            .bytes(value.string_value().unwrap_or_default().as_bytes())
            .bytes(value.binary_value().map(|b| b.as_ref()).unwrap_or_default());
    }
    Ok(out.finish())
}
