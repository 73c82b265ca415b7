//! Conversions without a broker: every binding both ways, structured mode, bad input.

use cloudevents::event::Data;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use mailroom_core::{Message, Timestamp};

use super::*;

const BINDINGS: [Binding; 4] = [Binding::Kafka, Binding::Amqp, Binding::Sqs, Binding::Memory];

/// An event with every optional attribute, string extensions and binary data: what binary mode
/// carries exactly.
fn full_event() -> Event {
    EventBuilderV10::new()
        .id("evt-1")
        .source("/shop/orders")
        .ty("com.example.order.placed")
        .subject("order-42")
        .time("2023-11-14T22:13:20.123Z")
        .data_with_schema(
            "application/octet-stream",
            "https://example.com/schemas/order",
            Data::Binary(vec![0, 159, 146, 150, 255]),
        )
        .extension("partitionkey", "customer-7")
        .extension("tenant", "acme")
        .build()
        .unwrap()
}

#[test]
fn binary_mode_round_trips_on_every_binding() {
    for binding in BINDINGS {
        let codec = EventCodec::binary(binding);
        let message = codec.encode(full_event()).unwrap();
        assert_eq!(codec.decode(&message).unwrap(), full_event(), "{binding:?}");
        assert_eq!(message.id().to_string(), "evt-1");
        assert_eq!(
            message.timestamp(),
            Some(Timestamp::from_millis(1_700_000_000_123))
        );
        assert_eq!(message.payload().as_ref(), [0, 159, 146, 150, 255]);
        assert_eq!(message.key(), None, "no key unless asked for");
    }
}

#[test]
fn headers_are_named_as_each_binding_says_required_attributes_first() {
    let names = |binding| {
        let m = EventCodec::binary(binding).encode(full_event()).unwrap();
        m.headers()
            .iter()
            .map(|(n, _)| n.to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(Binding::Kafka),
        [
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "content-type",
            "ce_dataschema",
            "ce_subject",
            "ce_time",
            "ce_partitionkey",
            "ce_tenant"
        ]
    );
    assert_eq!(names(Binding::Sqs), names(Binding::Kafka));
    assert_eq!(
        names(Binding::Amqp)[..4],
        [
            "cloudEvents:specversion",
            "cloudEvents:id",
            "cloudEvents:type",
            "cloudEvents:source"
        ]
    );
    let m = EventCodec::binary(Binding::Amqp)
        .encode(full_event())
        .unwrap();
    assert_eq!(
        m.headers().get("cloudEvents:time"),
        Some("2023-11-14T22:13:20.123+00:00"),
        "the SDK's RFC 3339 form"
    );
}

#[test]
fn json_and_text_data_travel_as_bytes_with_their_content_type() {
    let event = EventBuilderV10::new()
        .id("j")
        .source("/s")
        .ty("t")
        .data("application/json", serde_json::json!({"total": 12}))
        .build()
        .unwrap();
    let codec = EventCodec::binary(Binding::Kafka);
    let m = codec.encode(event.clone()).unwrap();
    assert_eq!(m.payload().as_ref(), br#"{"total":12}"#);
    assert_eq!(m.headers().get("content-type"), Some("application/json"));
    let back = codec.decode(&m).unwrap();
    // As the SDK's own bindings do: binary-mode data comes back as bytes.
    assert_eq!(
        back.data(),
        Some(&Data::Binary(br#"{"total":12}"#.to_vec()))
    );
    assert_eq!(back.datacontenttype(), Some("application/json"));
    assert_eq!(back.id(), event.id());
}

#[test]
fn structured_mode_round_trips_every_data_kind() {
    let json = EventBuilderV10::new()
        .id("s-1")
        .source("/s")
        .ty("t")
        .extension("count", 3_i64)
        .data("application/json", serde_json::json!({"a": [1, 2]}))
        .build()
        .unwrap();
    for event in [full_event(), json] {
        for binding in BINDINGS {
            let codec = EventCodec::structured(binding);
            let m = codec.encode(event.clone()).unwrap();
            assert_eq!(m.headers().get("content-type"), Some(STRUCTURED_JSON));
            assert_eq!(
                m.headers().len(),
                1,
                "structured mode adds no attribute headers"
            );
            assert_eq!(m.id().to_string(), event.id());
            // Any codec reads either mode: the mode is told by the message.
            assert_eq!(EventCodec::binary(binding).decode(&m).unwrap(), event);
        }
    }
}

#[test]
fn the_key_is_the_applications_or_opted_in_partitionkey() {
    let codec = EventCodec::binary(Binding::Kafka);
    let m = codec.encode_with_key(full_event(), "k-1").unwrap();
    assert_eq!(m.key(), Some("k-1"));
    let m = codec.partition_key_as_key().encode(full_event()).unwrap();
    assert_eq!(m.key(), Some("customer-7"));
    assert_eq!(
        m.headers().get("ce_partitionkey"),
        Some("customer-7"),
        "the key mapper must not change the event"
    );
    let m = EventCodec::structured(Binding::Sqs)
        .partition_key_as_key()
        .encode(full_event())
        .unwrap();
    assert_eq!(m.key(), Some("customer-7"));
    let too_long = "k".repeat(mailroom_core::message::MAX_KEY_BYTES + 1);
    let err = codec.encode_with_key(full_event(), &too_long).unwrap_err();
    assert!(matches!(err, CloudEventError::Message(_)), "{err}");
}

#[test]
fn an_event_id_that_is_not_a_message_id_still_travels_in_its_header() {
    let id = "x".repeat(300);
    let event = EventBuilderV10::new()
        .id(id.as_str())
        .source("/s")
        .ty("t")
        .build()
        .unwrap();
    let codec = EventCodec::binary(Binding::Memory);
    let m = codec.encode(event.clone()).unwrap();
    assert_ne!(m.id().to_string(), id);
    assert_eq!(codec.decode(&m).unwrap(), event);
}

fn message(headers: &[(&str, &str)], payload: &[u8]) -> Message {
    let mut b = Message::builder(payload.to_vec());
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.build().unwrap()
}

const VALID: [(&str, &str); 4] = [
    ("ce_specversion", "1.0"),
    ("ce_id", "1"),
    ("ce_source", "/s"),
    ("ce_type", "t"),
];

fn without(name: &str) -> Vec<(&'static str, &'static str)> {
    VALID.iter().copied().filter(|(n, _)| *n != name).collect()
}

#[test]
fn a_missing_required_attribute_is_named_with_its_header() {
    let codec = EventCodec::binary(Binding::Kafka);
    for (attribute, header) in [
        ("id", "ce_id"),
        ("source", "ce_source"),
        ("type", "ce_type"),
    ] {
        let err = codec.decode(&message(&without(header), b"x")).unwrap_err();
        match &err {
            CloudEventError::MissingAttribute {
                attribute: a,
                header: h,
            } => assert_eq!((a.as_str(), h.as_str()), (attribute, header)),
            other => panic!("{attribute}: {other:?}"),
        }
        assert!(err.to_string().contains(header), "{err}");
    }
    let err = EventCodec::binary(Binding::Amqp)
        .decode(&message(
            &[
                ("cloudEvents:specversion", "1.0"),
                ("cloudEvents:id", "1"),
                ("cloudEvents:type", "t"),
            ],
            b"",
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("cloudEvents:source"),
        "named as the binding names it: {err}"
    );
}

#[test]
fn a_bad_specversion_is_named() {
    let mut headers = without("ce_specversion");
    headers.push(("ce_specversion", "2.0"));
    let err = EventCodec::binary(Binding::Kafka)
        .decode(&message(&headers, b"x"))
        .unwrap_err();
    assert!(
        matches!(&err, CloudEventError::UnknownSpecVersion { found } if found == "2.0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"2.0\""), "{err}");
}

#[test]
fn an_attribute_of_the_wrong_type_is_named() {
    let mut headers = VALID.to_vec();
    headers.push(("ce_time", "yesterday"));
    let err = EventCodec::binary(Binding::Kafka)
        .decode(&message(&headers, b"x"))
        .unwrap_err();
    match &err {
        CloudEventError::InvalidAttribute {
            attribute, header, ..
        } => assert_eq!((attribute.as_str(), header.as_str()), ("time", "ce_time")),
        other => panic!("{other:?}"),
    }
    let mut headers = VALID.to_vec();
    headers.push(("ce_dataschema", "not a uri"));
    let err = EventCodec::binary(Binding::Kafka)
        .decode(&message(&headers, b"x"))
        .unwrap_err();
    assert!(err.to_string().contains("ce_dataschema"), "{err}");
}

#[test]
fn foreign_data_is_not_a_cloudevent() {
    let codec = EventCodec::binary(Binding::Kafka);
    let err = codec
        .decode(&message(&[("content-type", "text/plain")], b"hello"))
        .unwrap_err();
    assert!(
        matches!(&err, CloudEventError::NotACloudEvent { expected_header, content_type: Some(ct) }
            if expected_header == "ce_specversion" && ct == "text/plain"),
        "{err:?}"
    );
    // Another binding's names are not this binding's event.
    let amqp = EventCodec::binary(Binding::Amqp)
        .encode(full_event())
        .unwrap();
    let err = codec.decode(&amqp).unwrap_err();
    assert!(
        err.to_string().contains("no ce_specversion header"),
        "{err}"
    );
    // A structured content type with a body that is not the JSON format.
    let err = codec
        .decode(&message(
            &[("content-type", STRUCTURED_JSON)],
            b"\xff not json",
        ))
        .unwrap_err();
    assert!(
        matches!(err, CloudEventError::InvalidStructured { .. }),
        "{err:?}"
    );
    let err = codec
        .decode(&message(
            &[("content-type", STRUCTURED_JSON)],
            br#"{"specversion":"1.0","source":"/s","type":"t"}"#,
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("id"),
        "names the missing field: {err}"
    );
    let err = codec
        .decode(&message(
            &[("content-type", "application/cloudevents+avro")],
            b"\x00",
        ))
        .unwrap_err();
    assert!(
        matches!(err, CloudEventError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    let as_mailroom: mailroom_core::Error = codec.decode(&message(&[], b"x")).unwrap_err().into();
    assert_eq!(as_mailroom.kind(), mailroom_core::ErrorKind::Decode);
}

#[test]
fn amqp_reads_the_jms_spelling_too() {
    let headers: Vec<(String, &str)> = VALID
        .iter()
        .map(|(n, v)| (n.replace("ce_", "cloudEvents_"), *v))
        .collect();
    let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let event = EventCodec::binary(Binding::Amqp)
        .decode(&message(&borrowed, b"x"))
        .unwrap();
    assert_eq!(event.id(), "1");
}

#[test]
fn non_attribute_headers_are_not_part_of_the_event_and_rebind_keeps_them() {
    let mut m = EventCodec::binary(Binding::Amqp)
        .encode(full_event())
        .unwrap();
    m.headers_mut()
        .insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .unwrap();
    assert_eq!(
        EventCodec::binary(Binding::Amqp).decode(&m).unwrap(),
        full_event()
    );
    let kafka = EventCodec::rebind(m, Binding::Amqp, Binding::Kafka).unwrap();
    assert!(kafka.headers().contains("ce_id"));
    assert!(kafka.headers().contains("traceparent"));
    assert_eq!(
        EventCodec::binary(Binding::Kafka).decode(&kafka).unwrap(),
        full_event()
    );
}

#[test]
fn rebind_keeps_bytes_values_repeated_names_and_a_binary_key() {
    let m = EventCodec::binary(Binding::Amqp)
        .encode(full_event())
        .unwrap()
        .with_key_bytes(b"\xff\x01")
        .unwrap();
    let mut m = m;
    m.headers_mut()
        .append("bin", mailroom_core::HeaderValue::from(&b"\x00\xff"[..]))
        .unwrap();
    m.headers_mut().append("bin", "again").unwrap();
    let kafka = EventCodec::rebind(m, Binding::Amqp, Binding::Kafka).unwrap();
    assert_eq!(kafka.key_bytes(), Some(&b"\xff\x01"[..]));
    assert_eq!(
        kafka.headers().get_all("bin").collect::<Vec<_>>(),
        [
            &mailroom_core::HeaderValue::from(&b"\x00\xff"[..]),
            &mailroom_core::HeaderValue::from("again")
        ]
    );
    assert_eq!(
        EventCodec::binary(Binding::Kafka).decode(&kafka).unwrap(),
        full_event()
    );
}
