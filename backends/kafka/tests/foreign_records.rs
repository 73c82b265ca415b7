//! Records other producers write that mailroom cannot decode as they are: each is delivered
//! (never skipped, never a panic) and can be settled, and the consumer goes on to the next.
//!
//! One record comes from plain rdkafka (a binary key, binary and null header values, repeated
//! names, mailroom's own headers with values it does not accept). rdkafka only writes UTF-8
//! header names, but the Kafka protocol carries names as bytes and other clients write any, so
//! one record is written with a raw Produce request (v3, one RecordBatch v2) whose header name is
//! not UTF-8: rdkafka's header accessor panicked on it inside the consumer.

use std::time::Duration;

use mailroom_core::{Backend, ConsumerOptions, Delivery, QueueSpec};
use mailroom_kafka::KafkaBackend;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bound of every wait on the broker: a hang fails naming what it waited for.
const WAIT: Duration = Duration::from_secs(30);

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

async fn receive(c: &mut Box<dyn mailroom_core::Consumer>, what: &str) -> Delivery {
    c.receive_timeout(WAIT)
        .await
        .unwrap_or_else(|e| panic!("receiving {what}: {e}"))
        .unwrap_or_else(|| panic!("{what} was not delivered within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_binary_key_and_headers_from_plain_rdkafka_is_delivered() {
    let b = KafkaBackend::from_url(&url()).await.unwrap();
    let q = fresh("foreign");
    b.topology()
        .declare_queue(&QueueSpec::new(&q).partitions(1))
        .await
        .unwrap();
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "bin",
            value: Some(&b"\x00\xff\xfe"[..]),
        })
        .insert(Header::<&[u8]> {
            key: "null",
            value: None,
        })
        .insert(Header {
            key: "dup",
            value: Some("1"),
        })
        .insert(Header {
            key: "dup",
            value: Some("2"),
        })
        .insert(Header {
            key: "x-mailroom-id",
            value: Some("id\twith a tab"),
        })
        .insert(Header {
            key: "x-mailroom-timestamp-ms",
            value: Some("not a number"),
        })
        .insert(Header {
            key: "x-mailroom-attempt",
            value: Some(&b"\xff"[..]),
        });
    for (key, payload) in [
        (&b"\xff\xfe key"[..], &b"\x00\xff payload"[..]),
        (b"k", b"next"),
    ] {
        tokio::time::timeout(
            WAIT,
            plain.send(
                FutureRecord::to(&q)
                    .key(key)
                    .payload(payload)
                    .headers(headers.clone()),
                WAIT,
            ),
        )
        .await
        .expect("plain rdkafka's send did not finish")
        .unwrap();
    }

    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let d = receive(&mut c, "the foreign record").await;
    assert_eq!(&d.message().payload()[..], b"\x00\xff payload");
    assert_eq!(
        d.attempt(),
        1,
        "an unreadable attempt header counts as the first"
    );
    d.ack().await.unwrap();
    let next = receive(&mut c, "the record after it").await;
    assert_eq!(&next.message().payload()[..], b"next");
    next.ack().await.unwrap();
    c.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_header_name_that_is_not_utf8_is_delivered() {
    let b = KafkaBackend::from_url(&url()).await.unwrap();
    let q = fresh("non-utf8-name");
    b.topology()
        .declare_queue(&QueueSpec::new(&q).partitions(1))
        .await
        .unwrap();
    let headers: [(&[u8], &[u8]); 3] =
        [(b"before", b"1"), (b"\xff\xfename", b"v"), (b"after", b"2")];
    produce_raw(&q, b"raw producer", &headers).await;
    produce_raw(&q, b"next", &[]).await;

    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let d = receive(&mut c, "the record with a non-UTF-8 header name").await;
    let m = d.message();
    assert_eq!(&m.payload()[..], b"raw producer");
    assert_eq!(m.headers().get("before"), Some("1"), "{m:?}");
    assert_eq!(m.headers().get("after"), Some("2"), "{m:?}");
    assert!(
        m.headers()
            .get(mailroom_core::wire::DROPPED_HEADER)
            .is_some_and(|d| d.contains("header:<not UTF-8>")),
        "the left-out header is named in the dropped marker: {m:?}"
    );
    d.ack().await.unwrap();
    let next = receive(&mut c, "the record after it").await;
    assert_eq!(&next.message().payload()[..], b"next");
    next.ack().await.unwrap();
    c.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}

/// Write one record to partition 0 of `topic` with a Produce request (v3, acks=all) of our own,
/// so that its header names can be any bytes.
async fn produce_raw(topic: &str, value: &[u8], headers: &[(&[u8], &[u8])]) {
    let batch = record_batch(value, headers);
    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // api key: Produce
    body.extend_from_slice(&3i16.to_be_bytes()); // api version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    put_string(&mut body, b"mailroom-raw-test"); // client id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks: all
    body.extend_from_slice(&30_000i32.to_be_bytes()); // timeout ms
    body.extend_from_slice(&1i32.to_be_bytes()); // one topic
    put_string(&mut body, topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes()); // one partition
    body.extend_from_slice(&0i32.to_be_bytes()); // partition 0
    body.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    body.extend_from_slice(&batch);

    let exchange = async {
        let mut s = TcpStream::connect(bootstrap()).await.unwrap();
        s.write_all(&(body.len() as i32).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&body).await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut response = vec![0; len as usize];
        s.read_exact(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("the broker did not answer the raw Produce request");
    // correlation id, topic count, topic name, partition count, partition index, error code.
    let name_end = 4 + 4 + 2 + topic.len();
    let code = i16::from_be_bytes([response[name_end + 8], response[name_end + 9]]);
    assert_eq!(
        code, 0,
        "the broker refused the raw record: error code {code}"
    );
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A zigzag varint, as record fields are encoded.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// A RecordBatch (magic 2) of one uncompressed record.
fn record_batch(value: &[u8], headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut record = vec![0u8]; // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, -1); // key: null
    put_bytes(&mut record, value);
    put_varint(&mut record, headers.len() as i64);
    for (name, value) in headers {
        put_bytes(&mut record, name);
        put_bytes(&mut record, value);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // From attributes to the end: what the CRC covers.
    let mut tail = Vec::new();
    tail.extend_from_slice(&0i16.to_be_bytes()); // attributes
    tail.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    tail.extend_from_slice(&now.to_be_bytes()); // base timestamp
    tail.extend_from_slice(&now.to_be_bytes()); // max timestamp
    tail.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    tail.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    tail.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    tail.extend_from_slice(&1i32.to_be_bytes()); // one record
    put_varint(&mut tail, record.len() as i64);
    tail.extend_from_slice(&record);

    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset
    let length = 4 + 1 + 4 + tail.len(); // leader epoch, magic, crc, tail
    batch.extend_from_slice(&(length as i32).to_be_bytes());
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&tail).to_be_bytes());
    batch.extend_from_slice(&tail);
    batch
}

/// CRC-32C (Castagnoli), which RecordBatch v2 checksums with.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn crc32c_matches_the_standard_check_value() {
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
}
