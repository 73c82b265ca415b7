//! SQS: body, system and message attributes (meta, binary body marker) -> Message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mailroom_sqs::fuzzing::decode_message(data);
});
