//! The bench's OMB workload YAML (see `mailroom_fuzz::omb_workload`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom_fuzz::omb_workload(data));
