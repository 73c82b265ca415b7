//! The `sqs_message` fuzz target's committed inputs, replayed through the same entry point on
//! stable: its seed corpus (`fuzz/seeds/sqs_message`) and every input a fuzz run found a crash,
//! timeout or leak with (`fuzz/regressions/sqs_message`). Each must decode to a message, never
//! panic. `write_seed_corpus` (ignored) regenerates the seeds.
#![cfg(feature = "fuzzing")]

use mailroom_core::fuzzing::FuzzOutput;
use mailroom_core::{Message, Timestamp};
use mailroom_sqs::fuzzing::{decode_message, message_input};
use mailroom_testkit::FuzzCorpus;

const CORPUS: FuzzCorpus = FuzzCorpus::new("sqs_message");

#[test]
fn every_seed_and_crash_input_decodes_to_a_message() {
    let seeds = CORPUS.seeds();
    assert!(seeds.len() >= 5, "the seed corpus is missing: {seeds:?}");
    for (path, bytes) in seeds.into_iter().chain(CORPUS.regressions()) {
        let message = decode_message(&bytes);
        assert!(
            !message.id().to_string().is_empty(),
            "{}: a message without an id",
            path.display()
        );
    }
}

#[test]
fn what_a_send_encodes_decodes_to_the_same_message() {
    for (message, fifo) in mailroom_messages() {
        let got = decode_message(&message_input(&message, fifo, 5).unwrap());
        assert_eq!(got, message);
    }
}

#[test]
fn a_body_marked_base64_that_is_not_is_kept_as_text() {
    let message = decode_message(&foreign_messages()[0]);
    assert_eq!(message.payload().as_ref(), b"not base64 !");
}

fn mailroom_messages() -> Vec<(Message, bool)> {
    let binary = Message::builder(&b"\x00\xffbinary"[..])
        .header("zeta", "1")
        .header("alpha", "h\u{e9}")
        .header("tab", "a\tb")
        .header("ctl", "\u{1}")
        .key("customer-9")
        .timestamp(Timestamp::from_millis(1_700_000_000_123))
        .build()
        .unwrap();
    let many = (0..12).fold(Message::builder(""), |b, i| b.header(format!("h{i}"), "v"));
    vec![
        (Message::new("hello"), false),
        (binary.clone(), false),
        (binary, true),
        (many.build().unwrap(), false),
    ]
}

/// Messages another SQS client may send: the body marker without a base64 body, an unreadable
/// `mailroom.meta`, a readable one naming an attribute that is not there, binary attributes.
fn foreign_messages() -> Vec<Vec<u8>> {
    let attribute = |out: &mut FuzzOutput,
                     name: &str,
                     data_type: &str,
                     text: Option<&str>,
                     bin: Option<&[u8]>| {
        out.bytes(name.as_bytes())
            .bytes(data_type.as_bytes())
            .u8(u8::from(text.is_some()) | u8::from(bin.is_some()) << 1)
            .bytes(text.unwrap_or_default().as_bytes())
            .bytes(bin.unwrap_or_default());
    };
    let mut out = FuzzOutput::new();
    out.u8(3)
        .bytes(b"not base64 !")
        .bytes(b"id\twith a tab")
        .u8(1);
    out.bytes(b"SentTimestamp").bytes(b"-1").u8(3);
    attribute(
        &mut out,
        "mailroom.encoding",
        "String",
        Some("base64"),
        None,
    );
    attribute(
        &mut out,
        "mailroom.meta",
        "Binary",
        None,
        Some(b"{not json"),
    );
    attribute(&mut out, "bin", "Binary.custom", None, Some(b"\x00\xff"));
    let first = out.finish();

    let mut out = FuzzOutput::new();
    out.u8(1).bytes(b"x").bytes(b"").u8(0).u8(2);
    attribute(
        &mut out,
        "mailroom.meta",
        "Binary",
        None,
        Some(br#"{"v":9,"id":"","ts":18446744073709551615,"h":["gone",["",""],[1]]}"#),
    );
    attribute(&mut out, "mailroom.encoding", "String", Some("empty"), None);
    let second = out.finish();
    vec![first, second, Vec::new()]
}

/// Regenerate `fuzz/seeds/sqs_message` from mailroom's encoder and the foreign messages above:
/// `cargo test --workspace --all-features --test fuzz_regressions -- --ignored`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    let mut seeds: Vec<Vec<u8>> = mailroom_messages()
        .iter()
        .map(|(m, fifo)| message_input(m, *fifo, 1_700_000_000_000).unwrap())
        .collect();
    seeds.extend(foreign_messages());
    CORPUS.write_seeds(&seeds).unwrap();
}
