//! `Delivery::into_parts`: the split-off `Settlement` settles against the real in-memory queue
//! exactly as the delivery would have.

use mailroom_core::{Backend, Destination, Message, Nack, QueueSpec};
use mailroom_memory::MemoryBackend;

async fn broker_with_one_message(payload: &str) -> MemoryBackend {
    let broker = MemoryBackend::new();
    let topo = broker.topology();
    topo.declare_queue(&QueueSpec::new("dead")).await.unwrap();
    topo.declare_queue(&QueueSpec::new("q").dead_letter_queue("dead"))
        .await
        .unwrap();
    broker
        .producer()
        .await
        .unwrap()
        .send(&Destination::queue("q"), Message::new(payload.to_owned()))
        .await
        .unwrap();
    broker
}

#[tokio::test]
async fn ack_through_a_settlement_removes_the_message() {
    let broker = broker_with_one_message("a").await;
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let (message, info, settlement) = consumer.receive().await.unwrap().into_parts();
    assert_eq!(&message.payload()[..], b"a");
    assert_eq!(&*info.source, "q");
    assert_eq!(info.attempt, 1);
    assert_eq!(broker.queue_depth("q").unwrap().unacked, 1);
    settlement.ack().await.unwrap();
    let depth = broker.queue_depth("q").unwrap();
    assert_eq!((depth.ready, depth.unacked), (0, 0));
}

#[tokio::test]
async fn a_dropped_settlement_redelivers_and_a_kept_message_does_not_hold_it() {
    let broker = broker_with_one_message("b").await;
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let (message, _, settlement) = consumer.receive().await.unwrap().into_parts();
    drop(settlement);
    // The message itself stays usable after its settlement went back to the broker.
    assert_eq!(&message.payload()[..], b"b");
    let again = consumer.receive().await.unwrap();
    assert_eq!(again.message().id(), message.id());
    assert_eq!(again.attempt(), 2);
    assert!(again.info().redelivered);
    again.ack().await.unwrap();
}

#[tokio::test]
async fn nack_through_a_settlement_requeues_or_dead_letters() {
    let broker = broker_with_one_message("c").await;
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let (_, _, settlement) = consumer.receive().await.unwrap().into_parts();
    settlement.nack(Nack::requeue()).await.unwrap();
    let (_, info, settlement) = consumer.receive().await.unwrap().into_parts();
    assert_eq!(info.attempt, 2);
    settlement.nack(Nack::dead_letter("no good")).await.unwrap();
    assert_eq!(broker.queue_depth("q").unwrap().ready, 0);
    assert_eq!(broker.queue_depth("dead").unwrap().ready, 1);
}
