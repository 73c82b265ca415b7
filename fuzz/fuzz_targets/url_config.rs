//! URL and config parsing for every scheme (see `mailroom_fuzz::url_config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom_fuzz::url_config(data));
