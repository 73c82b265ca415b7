//! What other AMQP clients write reaches mailroom as they wrote it: a `message-id` mailroom
//! cannot accept keeps one id over a redelivery, and every AMQP header type arrives typed and
//! goes back out with its type.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{within, Waypoints};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_core::wire::ORIGINAL_ID_HEADER;
use mailroom_core::{
    Backend, ConsumerOptions, Destination, HeaderValue, MessageId, Nack, QueueSpec,
};
use mailroom_rabbitmq::RabbitBackend;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Each test's overall bound: plain lapin's own waits have none.
const TEST_BOUND: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(15);

fn name(what: &str) -> String {
    format!(
        "mr-wire-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// One header of every AMQP field type, with the value mailroom should read it as.
fn every_type() -> Vec<(&'static str, AMQPValue, HeaderValue)> {
    let mut inner = FieldTable::default();
    inner.insert("count".into(), AMQPValue::LongLongInt(2));
    inner.insert(
        "reason".into(),
        AMQPValue::LongString(LongString::from(&b"rejected"[..])),
    );
    let mut array = FieldArray::default();
    array.push(AMQPValue::FieldTable(inner.clone()));
    array.push(AMQPValue::Void);
    vec![
        ("t-bool", AMQPValue::Boolean(true), HeaderValue::Bool(true)),
        ("t-i8", AMQPValue::ShortShortInt(-1), HeaderValue::I8(-1)),
        ("t-u8", AMQPValue::ShortShortUInt(200), HeaderValue::U8(200)),
        ("t-i16", AMQPValue::ShortInt(-300), HeaderValue::I16(-300)),
        (
            "t-u16",
            AMQPValue::ShortUInt(60000),
            HeaderValue::U16(60000),
        ),
        (
            "t-i32",
            AMQPValue::LongInt(-70000),
            HeaderValue::I32(-70000),
        ),
        (
            "t-u32",
            AMQPValue::LongUInt(4_000_000_000),
            HeaderValue::U32(4_000_000_000),
        ),
        (
            "t-i64",
            AMQPValue::LongLongInt(-(1 << 40)),
            HeaderValue::I64(-(1 << 40)),
        ),
        ("t-f32", AMQPValue::Float(0.5), HeaderValue::F32(0.5)),
        ("t-f64", AMQPValue::Double(1e300), HeaderValue::F64(1e300)),
        (
            "t-decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 3,
                value: 1234,
            }),
            HeaderValue::Decimal {
                scale: 3,
                value: 1234,
            },
        ),
        (
            "t-text",
            AMQPValue::LongString(LongString::from(&b"caf\xc3\xa9"[..])),
            HeaderValue::from("caf\u{e9}"),
        ),
        (
            "t-bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 159, 255])),
            HeaderValue::Bytes(Bytes::from_static(&[0, 159, 255])),
        ),
        ("t-void", AMQPValue::Void, HeaderValue::Null),
        (
            "t-timestamp",
            AMQPValue::Timestamp(1_700_000_000),
            HeaderValue::TimestampSecs(1_700_000_000),
        ),
        (
            "t-array",
            AMQPValue::FieldArray(array),
            HeaderValue::Array(vec![
                HeaderValue::Table(vec![
                    ("count".into(), HeaderValue::I64(2)),
                    ("reason".into(), HeaderValue::from("rejected")),
                ]),
                HeaderValue::Null,
            ]),
        ),
        (
            "t-table",
            AMQPValue::FieldTable(inner),
            HeaderValue::Table(vec![
                ("count".into(), HeaderValue::I64(2)),
                ("reason".into(), HeaderValue::from("rejected")),
            ]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_amqp_type_arrives_typed_and_an_odd_message_id_survives_a_redelivery() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "plain lapin publishes");
    within(TEST_BOUND, &waypoints, async {
        let q = name("types");
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut table = FieldTable::default();
        for (n, v, _) in every_type() {
            table.insert(n.into(), v);
        }
        let props = BasicProperties::default()
            .with_message_id(ShortString::from("order\t42"))
            .with_headers(table);
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"odd",
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();

        waypoints.at("test", "mailroom consumes, requeues, consumes again");
        let backend = RabbitBackend::from_url(URL).await.unwrap();
        let mut c = backend
            .consumer(&q, ConsumerOptions::default())
            .await
            .unwrap();
        let d = c
            .receive_timeout(WAIT)
            .await
            .unwrap()
            .expect("nothing in 15 s");
        let m = d.message().clone();
        assert_eq!(m.id(), &MessageId::derive(b"order\t42"));
        assert_eq!(m.headers().get(ORIGINAL_ID_HEADER), Some("order\t42"));
        let want = every_type();
        for (n, _, v) in &want {
            assert_eq!(m.headers().get_value(n), Some(v), "header {n}");
        }
        assert_eq!(m.headers().len(), want.len() + 1, "{:?}", m.headers());
        d.nack(Nack::requeue()).await.unwrap();
        let again = c
            .receive_timeout(WAIT)
            .await
            .unwrap()
            .expect("the requeued message did not come back in 15 s");
        assert_eq!(again.message().id(), m.id(), "one id over the redelivery");
        assert_eq!(again.message().headers(), m.headers());

        waypoints.at("test", "mailroom forwards it; plain lapin reads the types");
        let out = name("types-out");
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&out))
            .await
            .unwrap();
        let p = backend.producer().await.unwrap();
        p.send(&Destination::queue(&out), again.message().clone())
            .await
            .unwrap();
        again.ack().await.unwrap();
        let mut plain = ch
            .basic_consume(
                out.as_str().into(),
                "wire-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let d = tokio::time::timeout(WAIT, plain.next())
            .await
            .expect("plain lapin got nothing in 15 s")
            .unwrap()
            .unwrap();
        let headers = d.properties.headers().clone().unwrap();
        for (n, amqp, _) in every_type() {
            assert_eq!(
                headers.inner().get(n),
                Some(&amqp),
                "header {n} kept its type"
            );
        }
        assert_eq!(
            d.properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned()),
            Some(m.id().to_string())
        );
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        c.close().await.unwrap();
        backend.topology().delete_queue(&q).await.unwrap();
        backend.topology().delete_queue(&out).await.unwrap();
        backend.close().await.unwrap();
        conn.close(200, "OK".into()).await.unwrap();
    })
    .await;
}
