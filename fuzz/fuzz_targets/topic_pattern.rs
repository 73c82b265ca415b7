//! Topic patterns: parse and match (see `mailroom_fuzz::topic_pattern`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom_fuzz::topic_pattern(data));
