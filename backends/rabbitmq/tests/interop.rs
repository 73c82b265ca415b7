//! Interop with plain lapin, both ways: what mailroom sends a lapin consumer reads intact, and
//! what lapin publishes mailroom consumes intact.

mod common;

use std::time::Duration;

use common::{within, Waypoints};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_core::{Backend, ConsumerOptions, Destination, Message, QueueSpec, Timestamp};
use mailroom_rabbitmq::RabbitBackend;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Each test's overall bound: plain lapin's own waits have none.
const TEST_BOUND: Duration = Duration::from_secs(60);

fn name(what: &str) -> String {
    format!(
        "mr-interop-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn text(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8(s.as_bytes().to_vec()).unwrap()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailroom_to_plain_lapin() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "mailroom sends");
    within(TEST_BOUND, &waypoints, async {
        let backend = RabbitBackend::from_url(URL).await.unwrap();
        let q = name("to-lapin");
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&q))
            .await
            .unwrap();
        let sent = Message::builder(&b"\x00\x01 binary \xff"[..])
            .id("order-42")
            .header("trace-id", "abc-123")
            .header("unicode", "h\u{e9}llo \u{2713}")
            .key("customer-7")
            .timestamp(Timestamp::from_millis(1_700_000_000_123))
            .build()
            .unwrap();
        let producer = backend.producer().await.unwrap();
        producer
            .send(&Destination::queue(&q), sent.clone())
            .await
            .unwrap();

        waypoints.at("test", "plain lapin consumes");
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(15), consumer.next())
            .await
            .expect("lapin received nothing")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, sent.payload().to_vec());
        assert_eq!(
            d.properties.message_id().as_ref().map(|s| s.as_str()),
            Some("order-42")
        );
        assert_eq!(d.properties.delivery_mode(), &Some(2));
        assert_eq!(d.properties.timestamp(), &Some(1_700_000_000));
        let headers = d.properties.headers().as_ref().unwrap().inner();
        assert_eq!(text(headers.get("trace-id")).as_deref(), Some("abc-123"));
        assert_eq!(
            text(headers.get("unicode")).as_deref(),
            Some("h\u{e9}llo \u{2713}")
        );
        assert_eq!(
            text(headers.get("x-mailroom-key")).as_deref(),
            Some("customer-7")
        );
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        conn.close(200, "OK".into()).await.unwrap();
        backend.topology().delete_queue(&q).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_lapin_to_mailroom() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "plain lapin publishes");
    within(TEST_BOUND, &waypoints, async {
        let q = name("from-lapin");
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
        let mut headers = FieldTable::default();
        headers.insert(
            "trace-id".into(),
            AMQPValue::LongString(LongString::from("xyz")),
        );
        headers.insert("retries".into(), AMQPValue::LongInt(3));
        let props = BasicProperties::default()
            .with_message_id("lapin-1".into())
            .with_headers(headers);
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"from lapin",
            props,
        )
        .await
        .unwrap();
        // A message without a message-id still arrives, with a generated id.
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"no id",
            BasicProperties::default(),
        )
        .await
        .unwrap();

        waypoints.at("test", "mailroom consumes");
        let backend = RabbitBackend::from_url(URL).await.unwrap();
        let mut c = backend
            .consumer(&q, ConsumerOptions::default())
            .await
            .unwrap();
        let d = c
            .receive_timeout(Duration::from_secs(15))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.message().payload().as_ref(), b"from lapin");
        assert_eq!(d.message().id().to_string(), "lapin-1");
        assert_eq!(d.message().headers().get("trace-id"), Some("xyz"));
        // An AMQP long-int keeps its type (it was its decimal text before typed values).
        assert_eq!(
            d.message().headers().get_value("retries"),
            Some(&mailroom_core::HeaderValue::I32(3))
        );
        assert_eq!(d.message().key(), None);
        assert_eq!(d.attempt(), 1);
        d.ack().await.unwrap();
        let d = c
            .receive_timeout(Duration::from_secs(15))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.message().payload().as_ref(), b"no id");
        assert!(d.message().headers().is_empty());
        d.ack().await.unwrap();
        c.close().await.unwrap();
        backend.topology().delete_queue(&q).await.unwrap();
        backend.close().await.unwrap();
        conn.close(200, "OK".into()).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_reports_its_product_and_version() {
    let backend = RabbitBackend::from_url(URL).await.unwrap();
    let version = backend.server_version().await.unwrap();
    // "RabbitMQ 3.10.8 (AMQP 0-9-1) at amqp://guest@127.0.0.1:5672/%2f"
    let number = version
        .strip_prefix("RabbitMQ ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    assert!(
        number.split('.').count() >= 2 && number.split('.').all(|p| p.parse::<u32>().is_ok()),
        "expected the broker's own version, got {version:?}"
    );
    assert!(!version.contains("guest:"), "no password in {version:?}");
    backend.close().await.unwrap();
}
