//! Entry points for the fuzz targets in `fuzz/` (not a public API; the `fuzzing` feature).
//!
//! The input is what a RabbitMQ delivery carries on the wire: the content header's property
//! flags and properties (headers table included), as AMQP encodes them, then the body. lapin's
//! own parser (amq-protocol's `parse_properties`, the one it runs on every content header) reads
//! the properties, and [`crate::codec`]'s decode turns them into a message as the consumer does.

use lapin::protocol::basic::{gen_properties, parse_properties};
use mailroom_core::{Error, ErrorKind, Message, Result};

use crate::codec::{self, Stamp};

/// Decode `input` (AMQP basic properties, then the body) as the consumer decodes a delivery.
///
/// Properties lapin cannot parse are a `Decode` error: lapin would have closed the connection
/// before mailroom saw them.
pub fn decode_wire(input: &[u8]) -> Result<Message> {
    let (body, properties) = parse_properties(input).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!("AMQP properties do not parse: {e}"),
        )
    })?;
    Ok(codec::decode(&properties, body.to_vec()).0)
}

/// `message` as [`decode_wire`] reads it, encoded as a send encodes it (for the seed corpus).
pub fn encode_wire(message: &Message) -> Result<Vec<u8>> {
    let properties = codec::properties(message, Stamp::default());
    let mut out = gen_properties(&properties)(Vec::new().into())
        .map_err(|e| Error::new(ErrorKind::Encode, format!("AMQP properties: {e}")))?
        .write;
    out.extend_from_slice(message.payload());
    Ok(out)
}
