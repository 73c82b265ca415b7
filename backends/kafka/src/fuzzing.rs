//! Entry points for the fuzz targets in `fuzz/` (not a public API; the `fuzzing` feature).
//!
//! The input is a Kafka record in [`FuzzInput`]'s format: topic, partition, offset, timestamp,
//! key, value and headers, each possibly absent, as a consumer can receive them from any
//! producer. It is built into an rdkafka record and decoded by [`crate::codec`] as the consumer
//! decodes what librdkafka hands it.

use mailroom_core::fuzzing::{FuzzInput, FuzzOutput};
use mailroom_core::Message;
use rdkafka::message::{Header, Headers as _, OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp;

use crate::codec;

/// Headers per record at most: more only repeats what a few already exercise.
const MAX_HEADERS: usize = 32;

/// Decode the record `input` describes, as the consumer does; the message and its attempt.
pub fn decode_record(input: &[u8]) -> (Message, u32) {
    let mut r = FuzzInput::new(input);
    let flags = r.u8();
    let topic = r.text();
    let partition = r.u32() as i32;
    let offset = r.u64() as i64;
    let millis = r.u64() as i64;
    let timestamp = match (flags >> 3) & 3 {
        0 => Timestamp::NotAvailable,
        1 => Timestamp::CreateTime(millis),
        _ => Timestamp::LogAppendTime(millis),
    };
    let key = (flags & 1 != 0).then(|| r.bytes().to_vec());
    let value = (flags & 2 != 0).then(|| r.bytes().to_vec());
    let headers = (flags & 4 != 0).then(|| {
        let count = usize::from(r.u8()).min(MAX_HEADERS);
        let mut headers = OwnedHeaders::new_with_capacity(count);
        for _ in 0..count {
            // rdkafka takes header names as &str only.
            let name = r.text();
            let present = r.u8() & 1 != 0;
            let value = r.bytes();
            headers = headers.insert(Header {
                key: &name,
                value: present.then_some(value),
            });
        }
        headers
    });
    let record = OwnedMessage::new(value, key, topic, timestamp, partition, offset, headers);
    let decoded = codec::decode(&record);
    (decoded.message, decoded.attempt)
}

/// The input [`decode_record`] reads back as the record a send of `message` writes (for the
/// seed corpus), at `topic`, partition 0, `offset`.
pub fn record_input(message: &Message, attempt: Option<u32>, topic: &str, offset: i64) -> Vec<u8> {
    let record = codec::encode(message, codec::Stamps::attempt(attempt));
    let flags = 1 << 3
        | u8::from(record.key.is_some())
        | u8::from(!record.payload.is_empty()) << 1
        | 1 << 2;
    let mut out = FuzzOutput::new();
    out.u8(flags)
        .bytes(topic.as_bytes())
        .u32(0)
        .u64(offset as u64)
        .u64(record.timestamp.unwrap_or(0) as u64);
    if let Some(key) = record.key {
        out.bytes(key);
    }
    if !record.payload.is_empty() {
        out.bytes(record.payload);
    }
    out.u8(record.headers.count() as u8);
    for h in record.headers.iter() {
        out.bytes(h.key.as_bytes())
            .u8(u8::from(h.value.is_some()))
            .bytes(h.value.unwrap_or_default());
    }
    out.finish()
}
