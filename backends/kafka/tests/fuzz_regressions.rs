//! The `kafka_record` fuzz target's committed inputs, replayed through the same entry point on
//! stable: its seed corpus (`fuzz/seeds/kafka_record`) and every input a fuzz run found a crash,
//! timeout or leak with (`fuzz/regressions/kafka_record`). Each must decode to a message with an
//! attempt of at least 1, never panic. `write_seed_corpus` (ignored) regenerates the seeds.
#![cfg(feature = "fuzzing")]

use mailroom_core::fuzzing::FuzzOutput;
use mailroom_core::{Message, Timestamp};
use mailroom_kafka::fuzzing::{decode_record, record_input};
use mailroom_testkit::FuzzCorpus;

const CORPUS: FuzzCorpus = FuzzCorpus::new("kafka_record");

#[test]
fn every_seed_and_crash_input_decodes_with_an_attempt_of_at_least_one() {
    let seeds = CORPUS.seeds();
    assert!(seeds.len() >= 5, "the seed corpus is missing: {seeds:?}");
    for (path, bytes) in seeds.into_iter().chain(CORPUS.regressions()) {
        let (_, attempt) = decode_record(&bytes);
        assert!(attempt >= 1, "{}: attempt {attempt}", path.display());
    }
}

#[test]
fn what_a_send_encodes_decodes_to_the_same_message() {
    for message in mailroom_messages() {
        let (got, attempt) = decode_record(&record_input(&message, Some(3), "orders", 7));
        assert_eq!(got, message);
        assert_eq!(attempt, 3);
    }
}

#[test]
fn a_foreign_record_gets_the_id_of_its_position() {
    let (message, attempt) = decode_record(&foreign_records()[0]);
    assert_eq!(message.id().to_string(), "kafka:orders:2:41");
    assert_eq!(attempt, 1);
}

fn mailroom_messages() -> Vec<Message> {
    vec![
        Message::new("hello"),
        Message::builder(&b"\x00\xffbinary"[..])
            .header("zeta", "1")
            .header("alpha", "h\u{e9}")
            .key("customer-9")
            .timestamp(Timestamp::from_millis(1_700_000_000_123))
            .build()
            .unwrap(),
    ]
}

/// Records another producer may write: a binary key and header values, a header without a
/// value, repeated names, mailroom's own headers with values it does not accept.
fn foreign_records() -> Vec<Vec<u8>> {
    let header = |out: &mut FuzzOutput, name: &str, value: Option<&[u8]>| {
        out.bytes(name.as_bytes())
            .u8(u8::from(value.is_some()))
            .bytes(value.unwrap_or_default());
    };
    let mut out = FuzzOutput::new();
    // key, value, headers; CreateTime.
    out.u8(1 | 2 | 4 | 1 << 3)
        .bytes(b"orders")
        .u32(2)
        .u64(41)
        .u64(1_700_000_000_000)
        .bytes(b"\xff\xfe binary key")
        .bytes(b"payload")
        .u8(4);
    header(&mut out, "bin", Some(b"\x00\xff"));
    header(&mut out, "null", None);
    header(&mut out, "dup", Some(b"1"));
    header(&mut out, "dup", Some(b"2"));
    let first = out.finish();

    let mut out = FuzzOutput::new();
    // headers only; LogAppendTime, negative.
    out.u8(4 | 2 << 3)
        .bytes(b"t")
        .u32(u32::MAX)
        .u64(u64::MAX)
        .u64(u64::MAX)
        .u8(3);
    header(&mut out, "x-mailroom-id", Some(b"id\twith a tab"));
    header(&mut out, "x-mailroom-timestamp-ms", Some(b"-5"));
    header(
        &mut out,
        "x-mailroom-attempt",
        Some(b"99999999999999999999"),
    );
    let second = out.finish();
    vec![first, second, Vec::new()]
}

/// Regenerate `fuzz/seeds/kafka_record` from mailroom's encoder and the foreign records above:
/// `cargo test --workspace --all-features --test fuzz_regressions -- --ignored`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    let mut seeds: Vec<Vec<u8>> = mailroom_messages()
        .iter()
        .map(|m| record_input(m, None, "orders", 0))
        .collect();
    seeds.push(record_input(&mailroom_messages()[1], Some(2), "orders", 1));
    seeds.extend(foreign_records());
    CORPUS.write_seeds(&seeds).unwrap();
}
