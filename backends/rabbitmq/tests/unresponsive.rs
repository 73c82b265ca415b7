//! A broker that stops answering without hanging up (a frozen host, a stalled network path)
//! must not hold `close` forever: every close returns within the connect timeout, and what
//! was not acked stays with the broker. Nor an ack the broker does not take.

mod common;

use std::time::{Duration, Instant};

use common::relay::{Relay, DIRECT_URL};
use common::{within, Waypoints};
use mailroom_core::{Backend, Destination, ErrorKind, Message, Producer, QueueSpec};
use mailroom_rabbitmq::RabbitBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_returns_within_the_connect_timeout_when_the_broker_goes_silent() {
    let waypoints = Waypoints::default();
    within(
        Duration::from_secs(60),
        &waypoints,
        silent_broker(&waypoints),
    )
    .await;
}

async fn silent_broker(waypoints: &Waypoints) {
    waypoints.at("test", "setting up through the relay");
    let relay = Relay::start().await;
    // No heartbeat, so only the close handshake can notice the silence.
    let url = relay.url("connect_timeout_ms=1000&heartbeat_secs=0");
    let backend = RabbitBackend::from_url(&url).await.unwrap();
    let queue = common::unique("mr-silent");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    let producer = backend.producer().await.unwrap();
    producer
        .send(&Destination::queue(&queue), Message::new("kept"))
        .await
        .unwrap();
    let mut consumer = backend.consumer(&queue, Default::default()).await.unwrap();
    let delivery = consumer.receive().await.unwrap();
    assert_eq!(delivery.message().payload().as_ref(), b"kept");

    relay.freeze();
    waypoints.at("test", "closing on a silent broker");
    // Generous outer bound: without the fix these never return at all.
    let bound = Duration::from_secs(15);
    let started = Instant::now();
    let _ = tokio::time::timeout(bound, consumer.close())
        .await
        .expect("consumer close returns");
    let _ = tokio::time::timeout(bound, producer.close())
        .await
        .expect("producer close returns");
    let _ = tokio::time::timeout(bound, backend.close())
        .await
        .expect("backend close returns");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "three closes, each bounded by the 1 s connect timeout: {:?}",
        started.elapsed()
    );
    drop(delivery);

    // The unacked message is still the broker's: once the silent connection is gone (cut
    // here; a heartbeat or TCP timeout in life), a fresh connection gets it.
    relay.cut_all();
    waypoints.at("test", "waiting for the redelivery");
    let direct = RabbitBackend::from_url(DIRECT_URL).await.unwrap();
    let mut again = direct.consumer(&queue, Default::default()).await.unwrap();
    let redelivered = tokio::time::timeout(Duration::from_secs(30), again.receive())
        .await
        .expect("the unacked message comes back once the silent connection is gone")
        .unwrap();
    assert_eq!(redelivered.message().payload().as_ref(), b"kept");
    redelivered.ack().await.unwrap();
    direct.topology().delete_queue(&queue).await.unwrap();
    direct.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_the_broker_does_not_take_returns_within_the_connect_timeout() {
    let waypoints = Waypoints::default();
    within(Duration::from_secs(60), &waypoints, unread_ack(&waypoints)).await;
}

/// The broker stops reading the connection (a large message being published fills the socket
/// buffers between them), while what it sends still arrives. An ack then cannot be handed
/// over: it must come back, `Timeout` or `Closed`, within the connect timeout, and the broker
/// redeliver the message. Before issue 20's fix the ack waited for ever, as the restart fault
/// test's consumer did.
async fn unread_ack(waypoints: &Waypoints) {
    waypoints.at("test", "setting up through the relay");
    let relay = Relay::start().await;
    let url = relay.url("connect_timeout_ms=1000&reconnect_timeout_ms=10000&heartbeat_secs=0");
    let backend = RabbitBackend::from_url(&url).await.unwrap();
    let queue = common::unique("mr-unread");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    let dest = Destination::queue(&queue);
    let producer = backend.rabbit_producer().await.unwrap();
    producer.send(&dest, Message::new("kept")).await.unwrap();
    let mut consumer = backend.consumer(&queue, Default::default()).await.unwrap();
    let delivery = consumer.receive().await.unwrap();

    relay.block();
    // Larger than the socket buffers between the client and the relay: its frames back up,
    // and the ack queued behind them cannot be written.
    let big = Message::new(vec![0u8; 15 * 1024 * 1024]);
    let sender = tokio::spawn({
        let dest = dest.clone();
        async move {
            let sent = producer.send(&dest, big).await;
            (producer, sent)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waypoints.at("test", "ack on a connection the broker does not read");
    let started = Instant::now();
    let acked = tokio::time::timeout(Duration::from_secs(10), delivery.ack())
        .await
        .expect("the ack returns");
    let e = acked.expect_err("the broker never read the ack");
    assert!(
        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Closed),
        "the ack failed with {e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the ack is bounded by the 1 s connect timeout: {:?}",
        started.elapsed()
    );

    // The large send gives the connection up and succeeds on a new one.
    waypoints.at("test", "the large send");
    let (producer, sent) = tokio::time::timeout(Duration::from_secs(20), sender)
        .await
        .expect("the large send returns")
        .unwrap();
    sent.expect("the large message is sent on a new connection");

    // Once the broker drops the connection it could not read, the unacked message is back.
    relay.cut_stalled();
    waypoints.at("test", "waiting for the redelivery");
    let mut payloads = Vec::new();
    while !payloads.iter().any(|p: &Vec<u8>| p == b"kept") {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.receive())
            .await
            .expect("the unacked message comes back")
            .unwrap();
        payloads.push(d.message().payload().to_vec());
        d.ack().await.unwrap();
    }
    let _ = consumer.close().await;
    let _ = producer.close().await;
    let _ = backend.topology().delete_queue(&queue).await;
    let _ = backend.close().await;
}
