//! The `amqp_message` fuzz target's committed inputs, replayed through the same entry point on
//! stable: its seed corpus (`fuzz/seeds/amqp_message`) and every input a fuzz run found a crash,
//! timeout or leak with (`fuzz/regressions/amqp_message`). Each must give a message or a typed
//! `Decode` error, never a panic. `write_seed_corpus` (ignored) regenerates the seeds.
#![cfg(feature = "fuzzing")]

use lapin::protocol::basic::gen_properties;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;
use mailroom_core::{ErrorKind, Message, Timestamp};
use mailroom_rabbitmq::fuzzing::{decode_wire, encode_wire};
use mailroom_testkit::FuzzCorpus;

const CORPUS: FuzzCorpus = FuzzCorpus::new("amqp_message");

#[test]
fn every_seed_decodes_to_a_message() {
    let seeds = CORPUS.seeds();
    assert!(seeds.len() >= 5, "the seed corpus is missing: {seeds:?}");
    for (path, bytes) in seeds {
        if let Err(e) = decode_wire(&bytes) {
            panic!("seed {} does not decode: {e}", path.display());
        }
    }
}

#[test]
fn every_crash_input_found_gives_a_message_or_a_typed_error() {
    for (path, bytes) in CORPUS.regressions() {
        match decode_wire(&bytes) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{}: {e}", path.display()),
        }
    }
}

#[test]
fn what_a_send_encodes_decodes_to_the_same_message() {
    for message in mailroom_messages() {
        let wire = encode_wire(&message).unwrap();
        assert_eq!(decode_wire(&wire).unwrap(), message);
    }
}

#[test]
fn bytes_that_are_not_amqp_properties_are_a_decode_error() {
    // Flags announcing a headers table, then a table length far past the end.
    let err = decode_wire(&[0x20, 0x00, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
}

fn mailroom_messages() -> Vec<Message> {
    let plain = Message::new("hello");
    let full = Message::builder(&b"\x00\xffbinary"[..])
        .header("zeta", "1")
        .header("alpha", "h\u{e9}")
        .header("content-type", "application/octet-stream")
        .key("customer-9")
        .timestamp(Timestamp::from_millis(1_700_000_000_123))
        .build()
        .unwrap();
    let sorted = Message::builder("")
        .header("a", "")
        .header("b", "2")
        .build()
        .unwrap();
    vec![plain, full, sorted]
}

/// Properties another AMQP client may send: every field-table value type (but the short string,
/// which amq-protocol writes in a form its own parser does not read back), a message id mailroom
/// does not accept, mailroom's own headers with values of the wrong type.
fn foreign_properties() -> Vec<BasicProperties> {
    let mut every_type = FieldTable::default();
    let values = [
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(8)),
        ("i16", AMQPValue::ShortInt(-16)),
        ("u16", AMQPValue::ShortUInt(16)),
        ("i32", AMQPValue::LongInt(-32)),
        ("u32", AMQPValue::LongUInt(32)),
        ("i64", AMQPValue::LongLongInt(-64)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.5)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
        ),
        (
            "long",
            AMQPValue::LongString(LongString::from(&b"\xff\xfe"[..])),
        ),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
        ),
        ("ts", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(FieldTable::default())),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(&b"\x00\x01"[..])),
        ),
        ("void", AMQPValue::Void),
    ];
    for (name, value) in values {
        every_type.insert(name.into(), value);
    }
    let mut wrong_types = FieldTable::default();
    wrong_types.insert(
        "x-mailroom-key".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    wrong_types.insert("x-mailroom-timestamp-ms".into(), AMQPValue::LongLongInt(-1));
    wrong_types.insert(
        "x-mailroom-attempt".into(),
        AMQPValue::LongString(LongString::from(&b"many"[..])),
    );
    wrong_types.insert(
        "x-mailroom-header-order".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString(LongString::from(&b"missing"[..])),
            AMQPValue::Boolean(false),
        ])),
    );
    wrong_types.insert("x-delivery-count".into(), AMQPValue::Double(2.0));
    vec![
        BasicProperties::default()
            .with_headers(every_type)
            .with_message_id("id\twith a tab".into())
            .with_timestamp(u64::MAX)
            .with_content_type("text/plain".into()),
        BasicProperties::default().with_headers(wrong_types),
        BasicProperties::default(),
    ]
}

/// Regenerate `fuzz/seeds/amqp_message` from mailroom's encoder and the foreign properties
/// above: `cargo test --workspace --all-features --test fuzz_regressions -- --ignored`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    let mut seeds: Vec<Vec<u8>> = mailroom_messages()
        .iter()
        .map(|m| encode_wire(m).unwrap())
        .collect();
    for props in foreign_properties() {
        let mut wire = gen_properties(&props)(Vec::new().into()).unwrap().write;
        wire.extend_from_slice(b"foreign body");
        seeds.push(wire);
    }
    CORPUS.write_seeds(&seeds).unwrap();
}
