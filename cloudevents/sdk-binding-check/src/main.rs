//! One-off check outside the workspace: the CloudEvents SDK's own rdkafka binding (rdkafka 0.38)
//! against mailroom's Kafka backend (rdkafka 0.39), on the real broker, both ways.
use std::time::Duration;

use cloudevents::binding::rdkafka::{FutureRecordExt, MessageExt, MessageRecord};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use mailroom::cloudevents::{Binding, EventCodec};
use mailroom::{Destination, MessageId, QueueSpec};
use rdkafka038::consumer::{Consumer, StreamConsumer};
use rdkafka038::producer::{FutureProducer, FutureRecord};
use rdkafka038::ClientConfig;

fn event(id: &str) -> cloudevents::Event {
    EventBuilderV10::new()
        .id(id)
        .source("https://shop.example.com/orders")
        .ty("com.example.order.placed")
        .subject("order-42")
        .time("2024-05-01T10:00:00.250Z")
        .data_with_schema(
            "application/vnd.example+bin",
            "https://example.com/s",
            Data::Binary(vec![1, 2, 0, 255]),
        )
        .extension("tenant", "acme")
        .build()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let broker = mailroom::connect("kafka://127.0.0.1:9092").await.unwrap();
    let topic = format!("ce-sdk-check-{}", MessageId::generate());
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&topic))
        .await
        .unwrap();

    // SDK (its own rdkafka binding) -> mailroom
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .unwrap();
    let sdk_event = event("written-by-sdk");
    let record = MessageRecord::from_event(sdk_event.clone()).unwrap();
    producer
        .send(
            FutureRecord::<str, Vec<u8>>::to(&topic)
                .key("k")
                .message_record(&record),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let mut consumer = broker.consumer(&topic, Default::default()).await.unwrap();
    let d = consumer
        .receive_timeout(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("nothing");
    let read = EventCodec::binary(Binding::Kafka)
        .decode(d.message())
        .unwrap();
    d.ack().await.unwrap();
    assert_eq!(read, sdk_event);
    println!(
        "SDK rdkafka binding -> mailroom: same event ({})",
        read.id()
    );

    // mailroom -> SDK (its own rdkafka binding)
    let ours = event("written-by-mailroom");
    let message = EventCodec::binary(Binding::Kafka)
        .encode_with_key(ours.clone(), "k")
        .unwrap();
    broker
        .producer()
        .await
        .unwrap()
        .send(&Destination::queue(&topic), message)
        .await
        .unwrap();
    let plain: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set(
            "group.id",
            format!("ce-sdk-check-{}", MessageId::generate()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    plain.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), plain.recv())
            .await
            .expect("nothing")
            .unwrap();
        seen.push(m.to_event().unwrap());
    }
    // Two partitioners (rdkafka 0.38's default, mailroom's murmur2): order only per partition.
    seen.sort_by(|a, b| a.id().cmp(b.id()));
    assert_eq!(seen, [ours.clone(), sdk_event]);
    println!(
        "mailroom -> SDK rdkafka binding: same event ({})",
        ours.id()
    );
    broker.topology().delete_queue(&topic).await.ok();
}
