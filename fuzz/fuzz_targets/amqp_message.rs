//! RabbitMQ: AMQP basic properties (header table included) and body -> Message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Ok or a typed Decode error; a panic is the bug.
    let _ = mailroom_rabbitmq::fuzzing::decode_wire(data);
});
