//! What other Kafka clients write reaches mailroom as they wrote it, and back: a key that is not
//! UTF-8, binary and null header values, a name repeated, the order of the headers, and an id
//! header mailroom cannot accept.

use std::time::Duration;

use bytes::Bytes;
use mailroom_core::wire::{ID_HEADER, ORIGINAL_ID_HEADER};
use mailroom_core::{
    Backend, ConsumerOptions, Destination, ErrorKind, HeaderValue, Message, MessageId, Nack,
    QueueSpec,
};
use mailroom_kafka::KafkaBackend;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

fn bootstrap() -> String {
    url()
        .trim_start_matches("kafka://")
        .split('?')
        .next()
        .unwrap_or("127.0.0.1:9092")
        .to_owned()
}

fn fresh(what: &str) -> String {
    format!(
        "mr-kafka-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_record_arrives_byte_for_byte_and_its_id_survives_a_redelivery() {
    let b = KafkaBackend::from_url(&url()).await.unwrap();
    let q = fresh("foreign-wire");
    b.topology()
        .declare_queue(&QueueSpec::new(&q).partitions(1))
        .await
        .unwrap();
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let key: &[u8] = b"\xff\xfekey\x00";
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "bin",
            value: Some(&b"\x00\x9f\x92\x96"[..]),
        })
        .insert(Header {
            key: "dup",
            value: Some("first"),
        })
        .insert(Header::<&[u8]> {
            key: "null",
            value: None,
        })
        .insert(Header {
            key: "dup",
            value: Some(&b"\xc3\x28"[..]),
        })
        .insert(Header {
            key: ID_HEADER,
            value: Some("has\ttab"),
        });
    tokio::time::timeout(
        WAIT,
        plain.send(
            FutureRecord::to(&q).key(key).payload("p").headers(headers),
            WAIT,
        ),
    )
    .await
    .expect("raw send timed out")
    .unwrap();

    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let d = c
        .receive_timeout(WAIT)
        .await
        .unwrap()
        .expect("mailroom got nothing within 30 s");
    let m = d.message().clone();
    assert_eq!(m.key(), None, "not UTF-8, so not a text key");
    assert_eq!(m.key_bytes(), Some(key));
    let values: Vec<(&str, &HeaderValue)> = m.headers().values().collect();
    assert_eq!(
        values,
        [
            (
                "bin",
                &HeaderValue::Bytes(Bytes::from_static(b"\x00\x9f\x92\x96"))
            ),
            ("dup", &HeaderValue::from("first")),
            ("null", &HeaderValue::Null),
            ("dup", &HeaderValue::Bytes(Bytes::from_static(b"\xc3\x28"))),
            (ORIGINAL_ID_HEADER, &HeaderValue::from("has\ttab")),
        ],
        "every header, in order, names repeated, values as bytes"
    );
    assert_eq!(m.id(), &MessageId::derive(b"has\ttab"));
    // Redelivered (nack with requeue): the same id, so an idempotent consumer sees one message.
    d.nack(Nack::requeue()).await.unwrap();
    let again = c
        .receive_timeout(WAIT)
        .await
        .unwrap()
        .expect("the requeued message did not come back within 30 s");
    assert_eq!(again.message().id(), m.id());
    assert_eq!(again.message().key_bytes(), Some(key));
    again.ack().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mailroom_sends_binary_keys_and_values_a_plain_client_reads_as_bytes() {
    let b = KafkaBackend::from_url(&url()).await.unwrap();
    let q = fresh("binary-out");
    b.topology()
        .declare_queue(&QueueSpec::new(&q).partitions(1))
        .await
        .unwrap();
    let p = b.producer().await.unwrap();
    let typed = Message::builder("t")
        .header_value("n", HeaderValue::I32(7))
        .build()
        .unwrap();
    let err = p
        .send(&Destination::queue(&q), typed.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode);
    assert!(err.to_string().contains("header 'n'"), "{err}");
    assert_eq!(err.undelivered(), Some(&typed));

    let sent = Message::builder("p")
        .key_bytes(b"\x80k")
        .append_header("h", &b"\xff"[..])
        .append_header("h", "text")
        .append_header("z", HeaderValue::Null)
        .build()
        .unwrap();
    p.send(&Destination::queue(&q), sent.clone()).await.unwrap();
    let plain: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", fresh("plain-group"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    plain.subscribe(&[&q]).unwrap();
    let m = tokio::time::timeout(WAIT, plain.recv())
        .await
        .expect("plain consumer got nothing within 30 s")
        .unwrap();
    assert_eq!(m.key(), Some(&b"\x80k"[..]));
    let got: Vec<(&str, Option<&[u8]>)> = m
        .headers()
        .unwrap()
        .iter()
        .map(|h| (h.key, h.value))
        .take(3)
        .collect();
    assert_eq!(
        got,
        [
            ("h", Some(&b"\xff"[..])),
            ("h", Some(&b"text"[..])),
            ("z", None)
        ]
    );
    drop(m);
    drop(plain);
    // And mailroom reads its own message back equal.
    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let d = c
        .receive_timeout(WAIT)
        .await
        .unwrap()
        .expect("nothing back");
    assert_eq!(d.message(), &sent);
    d.ack().await.unwrap();
    c.close().await.unwrap();
}
