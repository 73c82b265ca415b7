//! Behaviour specific to the in-memory broker, beyond the shared suite.

use std::time::Duration;

use mailroom_core::{Backend, Destination, ErrorKind, Message, Overflow, QueueSpec};
use mailroom_memory::{MemoryBackend, MemoryConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_with_backpressure_holds_the_producer_until_a_consumer_takes() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q").max_length(2, Overflow::Backpressure))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let dest = Destination::queue("q");
    producer.send(&dest, Message::new("1")).await.unwrap();
    producer.send(&dest, Message::new("2")).await.unwrap();
    let third = tokio::time::timeout(
        Duration::from_millis(200),
        producer.send(&dest, Message::new("3")),
    )
    .await;
    assert!(
        third.is_err(),
        "the third send must wait while the queue is full"
    );
    assert_eq!(broker.queue_depth("q").unwrap().ready, 2);

    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let sender = tokio::spawn(async move { producer.send(&dest, Message::new("3")).await });
    let first = consumer.receive().await.unwrap();
    first.ack().await.unwrap();
    sender.await.unwrap().unwrap();
    for expected in ["2", "3"] {
        let d = consumer.receive().await.unwrap();
        assert_eq!(d.message().payload().as_ref(), expected.as_bytes());
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn connections_to_the_same_name_share_one_broker() {
    let config = MemoryConfig {
        name: Some("shared-test".into()),
        ..MemoryConfig::default()
    };
    let a = MemoryBackend::with_config(config.clone());
    let b = MemoryBackend::with_config(config);
    a.topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    a.producer()
        .await
        .unwrap()
        .send(&Destination::queue("q"), Message::new("hi"))
        .await
        .unwrap();
    let mut consumer = b.consumer("q", Default::default()).await.unwrap();
    let d = consumer.receive().await.unwrap();
    assert_eq!(d.message().payload().as_ref(), b"hi");
    d.ack().await.unwrap();
    // A private broker sees none of it.
    assert_eq!(
        MemoryBackend::new().queue_depth("q").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_wakes_its_waiting_consumer_with_not_found() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let waiting = tokio::spawn(async move { consumer.receive().await.map(drop) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.topology().delete_queue("q").await.unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn closing_the_connection_closes_consumers_and_producers() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    broker.close().await.unwrap();
    let err = producer
        .send(&Destination::queue("q"), Message::new("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert_eq!(
        consumer.receive().await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[tokio::test]
async fn acking_after_the_consumer_closed_still_settles() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    producer
        .send(&Destination::queue("q"), Message::new("x"))
        .await
        .unwrap();
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let d = consumer.receive().await.unwrap();
    consumer.close().await.unwrap();
    assert_eq!(broker.queue_depth("q").unwrap().unacked, 1);
    d.ack().await.unwrap();
    assert_eq!(broker.queue_depth("q").unwrap().unacked, 0);
    assert_eq!(broker.queue_depth("q").unwrap().ready, 0);
}
