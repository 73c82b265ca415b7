//! A broker that stops answering without hanging up (a frozen host, a stalled network path)
//! must not hold `close` forever: every close returns within the connect timeout, and what
//! was not acked stays with the broker.

mod common;

use std::time::{Duration, Instant};

use common::relay::{Relay, DIRECT_URL};
use common::{within, Waypoints};
use mailroom_core::{Backend, Destination, Message, QueueSpec};
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
