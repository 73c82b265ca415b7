//! Kafka: a record (key, headers, value, timestamp) -> Message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_, attempt) = mailroom_kafka::fuzzing::decode_record(data);
    assert!(attempt >= 1, "an attempt is at least 1");
});
