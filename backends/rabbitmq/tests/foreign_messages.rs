//! A message another AMQP client publishes that mailroom cannot decode as it is (a message id
//! mailroom does not accept, header values of every AMQP type, mailroom's own headers with
//! values of the wrong type, a non-UTF-8 string): it is delivered, never skipped, never a panic;
//! an application that cannot use it dead-letters it with the reason; the next message follows.

mod common;

use std::time::Duration;

use common::{within, Waypoints};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_core::delivery::DEAD_LETTER_REASON_HEADER;
use mailroom_core::{Backend, Consumer, ConsumerOptions, Delivery, Nack, QueueSpec};
use mailroom_rabbitmq::RabbitBackend;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TEST_BOUND: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(20);

async fn receive(c: &mut Box<dyn Consumer>, what: &str) -> Delivery {
    c.receive_timeout(WAIT)
        .await
        .unwrap_or_else(|e| panic!("receiving {what}: {e}"))
        .unwrap_or_else(|| panic!("{what} was not delivered within {WAIT:?}"))
}

fn hostile_headers() -> FieldTable {
    let mut t = FieldTable::default();
    let values = [
        ("bool", AMQPValue::Boolean(true)),
        ("i32", AMQPValue::LongInt(-32)),
        ("i64", AMQPValue::LongLongInt(-64)),
        ("f64", AMQPValue::Double(-2.5)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
        ),
        (
            "not-utf8",
            AMQPValue::LongString(LongString::from(&b"\xff\xfe"[..])),
        ),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
        ),
        ("ts", AMQPValue::Timestamp(u64::MAX)),
        ("table", AMQPValue::FieldTable(FieldTable::default())),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(&b"\x00\x01"[..])),
        ),
        ("void", AMQPValue::Void),
        (
            "x-mailroom-key",
            AMQPValue::FieldTable(FieldTable::default()),
        ),
        (
            "x-mailroom-timestamp-ms",
            AMQPValue::LongString(LongString::from(&b"soon"[..])),
        ),
        ("x-mailroom-attempt", AMQPValue::LongLongInt(-3)),
        ("x-mailroom-header-order", AMQPValue::Boolean(false)),
    ];
    for (name, value) in values {
        t.insert(name.into(), value);
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_mailroom_cannot_decode_is_delivered_and_can_be_dead_lettered() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "declaring");
    within(TEST_BOUND, &waypoints, async {
        let q = common::unique("mr-foreign");
        let dlq = format!("{q}-dlq");
        let backend = RabbitBackend::from_url(URL).await.unwrap();
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&dlq))
            .await
            .unwrap();
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&q).dead_letter_queue(&dlq))
            .await
            .unwrap();

        waypoints.at("test", "plain lapin publishes");
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let hostile = BasicProperties::default()
            .with_message_id("id\twith a tab".into())
            .with_timestamp(u64::MAX)
            .with_headers(hostile_headers());
        for (body, props) in [
            (&b"\x00\xff foreign"[..], hostile),
            (b"next", BasicProperties::default()),
        ] {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }

        waypoints.at("test", "mailroom consumes");
        let mut c = backend
            .consumer(&q, ConsumerOptions::default())
            .await
            .unwrap();
        let d = receive(&mut c, "the foreign message").await;
        assert_eq!(d.message().payload().as_ref(), b"\x00\xff foreign");
        assert_eq!(
            d.message().headers().get_value("i32"),
            Some(&mailroom_core::HeaderValue::I32(-32)),
            "an AMQP integer header arrives typed"
        );
        d.nack(Nack::dead_letter("cannot use: foreign headers"))
            .await
            .unwrap();
        let next = receive(&mut c, "the message after it").await;
        assert_eq!(next.message().payload().as_ref(), b"next");
        next.ack().await.unwrap();

        waypoints.at("test", "reading the dead-letter queue");
        let mut dead = backend
            .consumer(&dlq, ConsumerOptions::default())
            .await
            .unwrap();
        let d = receive(&mut dead, "the dead-lettered foreign message").await;
        assert_eq!(d.message().payload().as_ref(), b"\x00\xff foreign");
        assert_eq!(
            d.message().headers().get(DEAD_LETTER_REASON_HEADER),
            Some("cannot use: foreign headers"),
            "{:?}",
            d.message()
        );
        d.ack().await.unwrap();
        c.close().await.unwrap();
        dead.close().await.unwrap();
        backend.topology().delete_queue(&q).await.unwrap();
        backend.topology().delete_queue(&dlq).await.unwrap();
        backend.close().await.unwrap();
        let _ = conn.close(200, "OK".into()).await;
    })
    .await;
}
