//! A CloudEvent through every real broker and back, binary and structured mode: sent as a
//! message by mailroom, received, read back as the same event.
//!
//! Needs the brokers on loopback (`scripts/brokers.sh up`); `MAILROOM_RABBITMQ_URL`,
//! `MAILROOM_KAFKA_URL`, `MAILROOM_SQS_URL` override the defaults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::cloudevents::cloudevents::event::Data;
use mailroom::cloudevents::cloudevents::{EventBuilder, EventBuilderV10};
use mailroom::cloudevents::{Binding, Event, EventCodec};
use mailroom::{Backend, Destination, MessageId, QueueSpec};

const DEADLINE: Duration = Duration::from_secs(60);

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Connect, retrying for a while: a broker restarted by another test may still be starting.
async fn connect(url: &str) -> Arc<dyn Backend> {
    let started = Instant::now();
    loop {
        match mailroom::connect(url).await {
            Ok(broker) => return broker,
            Err(e) if e.is_temporary() && started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("broker not reachable (scripts/brokers.sh up): {e}"),
        }
    }
}

/// Every attribute, two string extensions and data that is not text (SQS must base64 it).
fn event(id: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("/shop/orders")
        .ty("com.example.order.placed")
        .subject("order-42")
        .time("2023-11-14T22:13:20.123Z")
        .data_with_schema(
            "application/octet-stream",
            "https://example.com/schemas/order",
            Data::Binary(vec![0, 159, 146, 150, 255, b'\n']),
        )
        .extension("partitionkey", "customer-7")
        .extension("tenant", "acme")
        .build()
        .unwrap()
}

/// JSON data with a non-string extension: structured mode keeps both types exactly.
fn json_event(id: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("/shop/orders")
        .ty("com.example.order.placed")
        .extension("count", 3_i64)
        .data(
            "application/json",
            serde_json::json!({"total": 12, "items": ["a"]}),
        )
        .build()
        .unwrap()
}

/// Send `events` through a fresh queue on `broker` with the codec, read them back in order.
async fn through(broker: &Arc<dyn Backend>, codec: EventCodec, events: &[Event]) -> Vec<Event> {
    let queue = format!("ce-{}", MessageId::generate());
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    for e in events {
        let message = codec.encode_with_key(e.clone(), "k-1").unwrap();
        producer
            .send(&Destination::queue(&queue), message)
            .await
            .unwrap();
    }
    let mut consumer = broker.consumer(&queue, Default::default()).await.unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < events.len() {
        assert!(
            started.elapsed() < DEADLINE,
            "{queue}: only {got:?} arrived"
        );
        let Some(delivery) = consumer
            .receive_timeout(Duration::from_secs(5))
            .await
            .unwrap()
        else {
            continue;
        };
        let message = delivery.message().clone();
        delivery.ack().await.unwrap();
        assert_eq!(message.key(), Some("k-1"), "{}", broker.name());
        // The broker's own binding, found by its name, reads what the codec wrote.
        let binding = Binding::for_backend(broker.name()).unwrap();
        assert_eq!(binding, codec.binding());
        got.push(EventCodec::binary(binding).decode(&message).unwrap());
    }
    broker.topology().delete_queue(&queue).await.ok();
    got
}

async fn round_trip(broker: Arc<dyn Backend>) {
    let binding = Binding::for_backend(broker.name()).unwrap();
    let binary = [event("evt-b1"), event("evt-b2")];
    assert_eq!(
        through(&broker, EventCodec::binary(binding), &binary).await,
        binary,
        "binary mode on {}",
        broker.name()
    );
    let structured = [json_event("evt-s1"), event("evt-s2")];
    assert_eq!(
        through(&broker, EventCodec::structured(binding), &structured).await,
        structured,
        "structured mode on {}",
        broker.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_carries_an_event_in_both_modes() {
    round_trip(connect("memory://").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_carries_an_event_in_both_modes() {
    round_trip(
        connect(&url(
            "MAILROOM_RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ))
        .await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_carries_an_event_in_both_modes() {
    round_trip(connect(&url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_carries_an_event_in_both_modes() {
    round_trip(connect(&url("MAILROOM_SQS_URL", mailroom::sqs::DEFAULT_URL)).await).await;
}

/// What a plain AMQP client sees of a binary-mode event: `cloudEvents:` headers (the AMQP
/// binding's application properties) and `datacontenttype` in the `content_type` property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_amqp_client_sees_the_amqp_binding() {
    use lapin::options::BasicGetOptions;
    use lapin::types::AMQPValue;

    let amqp = url(
        "MAILROOM_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let broker = connect(&amqp).await;
    let queue = format!("ce-plain-{}", MessageId::generate());
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    let message = EventCodec::binary(Binding::Amqp)
        .encode(event("evt-amqp"))
        .unwrap();
    broker
        .producer()
        .await
        .unwrap()
        .send(&Destination::queue(&queue), message)
        .await
        .unwrap();

    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the queue is empty");
    let props = &got.delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(
        props.message_id().as_ref().map(|c| c.as_str()),
        Some("evt-amqp")
    );
    let headers = props.headers().as_ref().unwrap().inner();
    let text = |name: &str| match headers.get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("cloudEvents:specversion"), "1.0");
    assert_eq!(text("cloudEvents:id"), "evt-amqp");
    assert_eq!(text("cloudEvents:type"), "com.example.order.placed");
    assert_eq!(text("cloudEvents:source"), "/shop/orders");
    assert_eq!(text("cloudEvents:time"), "2023-11-14T22:13:20.123+00:00");
    assert_eq!(text("cloudEvents:tenant"), "acme");
    assert!(!headers.contains_key("content-type"));
    assert!(!headers.contains_key("ce_id"));
    assert_eq!(
        got.delivery.data,
        [0, 159, 146, 150, 255, b'\n'],
        "the data is the body"
    );
    conn.close(0, "done".into()).await.ok();
    broker.topology().delete_queue(&queue).await.ok();
}
