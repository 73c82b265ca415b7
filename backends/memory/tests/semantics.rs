//! Behaviour specific to the in-memory broker, beyond the shared suite.

use std::time::Duration;

use mailroom_core::{
    Backend, BackendFactory, Binding, Destination, ErrorKind, ExchangeKind, ExchangeSpec, Message,
    MessageId, Overflow, QueueSpec,
};
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

/// Payloads of everything `consumer` can take now, acked.
async fn drain_now(consumer: &mut Box<dyn mailroom_core::Consumer>) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(d) = consumer
        .receive_timeout(Duration::from_millis(100))
        .await
        .unwrap()
    {
        got.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.unwrap();
    }
    got
}

fn numbered(range: std::ops::Range<usize>) -> Vec<Message> {
    range.map(|i| Message::new(i.to_string())).collect()
}

fn strings(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_into_a_full_backpressure_queue_waits_for_room_and_keeps_its_order() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q").max_length(10, Overflow::Backpressure))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let sender = tokio::spawn(async move {
        let (mut messages, mut pending) = (numbered(0..30), Vec::new());
        producer
            .enqueue_batch(&Destination::queue("q"), &mut messages, &mut pending)
            .await;
        pending
    });
    // The batch fills the queue and waits: only the first ten are in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !sender.is_finished(),
        "the batch must wait while the queue is full"
    );
    assert_eq!(broker.queue_depth("q").unwrap().ready, 10);
    let mut got = Vec::new();
    while got.len() < 30 {
        let d = consumer.receive().await.unwrap();
        got.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.unwrap();
    }
    assert_eq!(got, strings(0..30));
    let pending = sender.await.unwrap();
    assert_eq!(pending.len(), 30);
    for confirm in pending {
        confirm.unwrap().await.unwrap();
    }
}

#[tokio::test]
async fn a_batch_into_a_full_reject_queue_refuses_the_overflow_and_returns_each_message() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q").max_length(10, Overflow::Reject))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let (mut messages, mut pending) = (numbered(0..15), Vec::new());
    let ids: Vec<_> = messages.iter().map(|m| m.id().clone()).collect();
    producer
        .enqueue_batch(&Destination::queue("q"), &mut messages, &mut pending)
        .await;
    assert!(messages.is_empty());
    assert_eq!(pending.len(), 15);
    for (i, result) in pending.into_iter().enumerate() {
        match result {
            Ok(confirm) if i < 10 => {
                confirm.await.unwrap();
            }
            Err(e) if i >= 10 => {
                assert_eq!(e.kind(), ErrorKind::QueueFull, "{e}");
                assert_eq!(e.undelivered().map(Message::id), Some(&ids[i]));
            }
            other => panic!("entry {i}: unexpected {:?}", other.map(drop)),
        }
    }
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    assert_eq!(drain_now(&mut consumer).await, strings(0..10));
}

/// A broker with exchange "x" of `kind`, and each binding's queue declared and bound.
async fn with_exchange(kind: ExchangeKind, bindings: &[Binding]) -> MemoryBackend {
    let broker = MemoryBackend::new();
    let topo = broker.topology();
    topo.declare_exchange(&ExchangeSpec::new("x", kind))
        .await
        .unwrap();
    for binding in bindings {
        topo.declare_queue(&QueueSpec::new(&binding.queue))
            .await
            .unwrap();
        topo.bind(binding).await.unwrap();
    }
    broker
}

#[tokio::test]
async fn a_batch_to_an_exchange_is_routed_message_by_message() {
    let broker = with_exchange(
        ExchangeKind::Direct,
        &[
            Binding::key("x", "even", "even"),
            Binding::key("x", "odd", "odd"),
        ],
    )
    .await;
    let producer = broker.producer().await.unwrap();
    let mut pending = Vec::new();
    for i in 0..6 {
        let key = if i % 2 == 0 { "even" } else { "odd" };
        let mut messages = numbered(i..i + 1);
        producer
            .enqueue_batch(
                &Destination::exchange("x", key),
                &mut messages,
                &mut pending,
            )
            .await;
    }
    for confirm in pending {
        confirm.unwrap().await.unwrap();
    }
    let mut even = broker.consumer("even", Default::default()).await.unwrap();
    let mut odd = broker.consumer("odd", Default::default()).await.unwrap();
    assert_eq!(drain_now(&mut even).await, ["0", "2", "4"]);
    assert_eq!(drain_now(&mut odd).await, ["1", "3", "5"]);
}

#[tokio::test]
async fn a_batch_to_a_missing_queue_returns_every_message_as_not_found() {
    let broker = MemoryBackend::new();
    let producer = broker.producer().await.unwrap();
    let (mut messages, mut pending) = (numbered(0..3), Vec::new());
    let ids: Vec<_> = messages.iter().map(|m| m.id().clone()).collect();
    producer
        .enqueue_batch(&Destination::queue("nowhere"), &mut messages, &mut pending)
        .await;
    assert_eq!(pending.len(), 3);
    for (result, id) in pending.into_iter().zip(&ids) {
        let e = result.expect_err("a send to a missing queue must fail");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(e.undelivered().map(Message::id), Some(id));
    }
}

#[tokio::test]
async fn a_batch_of_several_to_a_fanout_exchange_reaches_every_bound_queue_in_order() {
    let broker = with_exchange(
        ExchangeKind::Fanout,
        &[Binding::fanout("x", "a"), Binding::fanout("x", "b")],
    )
    .await;
    let producer = broker.producer().await.unwrap();
    let (mut messages, mut pending) = (numbered(0..20), Vec::new());
    producer
        .enqueue_batch(&Destination::exchange("x", ""), &mut messages, &mut pending)
        .await;
    assert_eq!(pending.len(), 20);
    for confirm in pending {
        confirm.unwrap().await.unwrap();
    }
    for q in ["a", "b"] {
        let mut consumer = broker.consumer(q, Default::default()).await.unwrap();
        assert_eq!(drain_now(&mut consumer).await, strings(0..20), "queue {q}");
    }
}

/// A batch wakes one waiting consumer per message it adds, not just the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_wakes_as_many_waiting_consumers_as_it_adds_messages() {
    const WAITING: usize = 4;
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for _ in 0..WAITING {
        let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
        waiters.push(tokio::spawn(async move {
            let d = consumer.receive().await.unwrap();
            let payload = String::from_utf8_lossy(d.message().payload()).into_owned();
            d.ack().await.unwrap();
            payload
        }));
    }
    // Every consumer is parked in `receive` before the batch lands.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let producer = broker.producer().await.unwrap();
    let (mut messages, mut pending) = (numbered(0..WAITING), Vec::new());
    producer
        .enqueue_batch(&Destination::queue("q"), &mut messages, &mut pending)
        .await;
    let mut got = Vec::new();
    for w in waiters {
        let payload = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("a waiting consumer was not woken by the batch")
            .unwrap();
        got.push(payload);
    }
    got.sort();
    assert_eq!(got, strings(0..WAITING));
}

/// `try_enqueue` takes what needs no waiting, confirmed at once, and hands back, unchanged,
/// what would wait (a full backpressure queue, an exchange, a delay); refusals keep the message.
#[tokio::test]
async fn try_enqueue_takes_at_once_or_hands_the_message_back() {
    use mailroom_core::TryEnqueue;
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q").max_length(2, Overflow::Backpressure))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let dest = Destination::queue("q");
    for body in ["1", "2"] {
        let message = Message::new(body);
        let id = message.id().clone();
        let TryEnqueue::Done(Ok(mut pending)) = producer.try_enqueue(&dest, message) else {
            panic!("a queue with room did not take {body} at once");
        };
        let receipt = pending.take_if_ready().expect("confirmed at once").unwrap();
        assert_eq!(receipt.id, id);
    }
    let third = Message::new("3");
    let id = third.id().clone();
    let TryEnqueue::Wait(back) = producer.try_enqueue(&dest, third) else {
        panic!("a full backpressure queue took a third message");
    };
    assert_eq!((back.id(), back.payload().as_ref()), (&id, &b"3"[..]));
    assert_eq!(broker.queue_depth("q").unwrap().ready, 2);

    let delayed = Message::builder("later")
        .delay(Duration::from_millis(5))
        .build()
        .unwrap();
    let TryEnqueue::Wait(back) = producer.try_enqueue(&Destination::queue("q"), delayed) else {
        panic!("a delayed message was taken without waiting");
    };
    assert_eq!(
        back.delay(),
        Some(Duration::from_millis(5)),
        "the delay is kept"
    );
    let routed = producer.try_enqueue(&Destination::exchange("x", "k"), Message::new("r"));
    assert!(matches!(routed, TryEnqueue::Wait(_)), "{routed:?}");

    let missing = producer.try_enqueue(&Destination::queue("nowhere"), Message::new("m"));
    let TryEnqueue::Done(Err(e)) = missing else {
        panic!("a send to a missing queue was not refused: {missing:?}");
    };
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.undelivered().is_some(), "the refused message comes back");

    producer.close().await.unwrap();
    let closed = producer.try_enqueue(&dest, Message::new("late"));
    let TryEnqueue::Done(Err(e)) = closed else {
        panic!("a closed producer took a message: {closed:?}");
    };
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(e.undelivered().is_some());

    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    for expected in ["1", "2"] {
        let d = consumer.receive().await.unwrap();
        assert_eq!(d.message().payload().as_ref(), expected.as_bytes());
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_enqueue_follows_a_queue_declared_anew_and_a_second_queue() {
    use mailroom_core::TryEnqueue;
    let broker = MemoryBackend::new();
    let topology = broker.topology();
    for name in ["a", "b"] {
        topology.declare_queue(&QueueSpec::new(name)).await.unwrap();
    }
    topology
        .declare_queue(&QueueSpec::new("small").max_length(1, Overflow::Reject))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let send = |queue: &str, body: &str| {
        let sent = producer.try_enqueue(&Destination::queue(queue), Message::new(body.to_owned()));
        matches!(sent, TryEnqueue::Done(Ok(_)))
    };
    assert!(send("a", "a1"));
    assert!(send("b", "b1"));
    assert!(send("a", "a2"));
    assert_eq!(broker.queue_depth("a").unwrap().ready, 2);
    assert_eq!(broker.queue_depth("b").unwrap().ready, 1);

    // The first queue, deleted and declared again: sends go to the new one, not the old.
    topology.delete_queue("a").await.unwrap();
    let gone = producer.try_enqueue(&Destination::queue("a"), Message::new("lost"));
    let TryEnqueue::Done(Err(e)) = gone else {
        panic!("a send to a deleted queue was taken: {gone:?}");
    };
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    topology.declare_queue(&QueueSpec::new("a")).await.unwrap();
    assert!(send("a", "a3"));
    assert_eq!(broker.queue_depth("a").unwrap().ready, 1);

    // A full queue that rejects refuses at once, the message inside the error.
    assert!(send("small", "s1"));
    let refused = producer.try_enqueue(&Destination::queue("small"), Message::new("s2"));
    let TryEnqueue::Done(Err(e)) = refused else {
        panic!("a full reject queue took a message: {refused:?}");
    };
    assert_eq!(e.kind(), ErrorKind::QueueFull, "{e}");
    let back = e.undelivered().expect("the refused message comes back");
    assert_eq!(back.payload().as_ref(), b"s2");

    let mut consumer = broker.consumer("a", Default::default()).await.unwrap();
    let d = consumer.try_receive().expect("ready").unwrap();
    assert_eq!(d.message().payload().as_ref(), b"a3");
    assert!(
        consumer.try_receive().is_none(),
        "nothing else in the new queue"
    );
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_receive_dead_letters_expired_messages_and_delivers_the_next_live_one() {
    let broker = MemoryBackend::new();
    let topology = broker.topology();
    topology
        .declare_queue(&QueueSpec::new("dlq"))
        .await
        .unwrap();
    topology
        .declare_queue(
            &QueueSpec::new("ttl")
                .message_ttl(Duration::from_millis(20))
                .dead_letter_queue("dlq"),
        )
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let mut consumer = broker.consumer("ttl", Default::default()).await.unwrap();
    // An empty look first: the settle room it set aside must serve the next delivery.
    assert!(consumer.try_receive().is_none());
    for body in ["old1", "old2"] {
        producer
            .send(&Destination::queue("ttl"), Message::new(body))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    producer
        .send(&Destination::queue("ttl"), Message::new("fresh"))
        .await
        .unwrap();
    let d = consumer.try_receive().expect("a live message").unwrap();
    assert_eq!(d.message().payload().as_ref(), b"fresh");
    assert_eq!(d.attempt(), 1);
    // Dropped unsettled: it comes back, its attempt counted.
    drop(d);
    let again = consumer.try_receive().expect("redelivered").unwrap();
    assert_eq!(
        (again.message().payload().as_ref(), again.attempt()),
        (&b"fresh"[..], 2)
    );
    again.ack().await.unwrap();
    assert!(consumer.try_receive().is_none());

    let mut dead = broker.consumer("dlq", Default::default()).await.unwrap();
    for expected in ["old1", "old2"] {
        let d = dead.try_receive().expect("dead-lettered").unwrap();
        assert_eq!(d.message().payload().as_ref(), expected.as_bytes());
        d.ack().await.unwrap();
    }
}

/// A bare broker whose messages may be at most 100 bytes, with a queue `q`.
async fn small_limit() -> MemoryBackend {
    let broker = MemoryBackend::with_config(MemoryConfig {
        max_message_size: 100,
        ..MemoryConfig::default()
    });
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    broker
}

/// The error the capability layer gives for `message` on `broker`, to compare with the
/// producer's own.
fn layer_error(broker: &MemoryBackend, message: &Message) -> mailroom_core::Error {
    broker
        .capabilities()
        .check_message(message, "memory", "send")
        .expect_err("over the limit")
}

fn same_refusal(e: &mailroom_core::Error, expected: &mailroom_core::Error, id: &MessageId) {
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(e.message(), expected.message());
    assert_eq!(e.backend(), Some("memory"));
    assert_eq!(e.operation(), Some("send"));
    assert_eq!(e.undelivered().map(Message::id), Some(id));
}

#[tokio::test]
async fn the_producer_itself_refuses_an_oversize_message_as_the_capability_check_would() {
    use mailroom_core::TryEnqueue;
    let broker = small_limit().await;
    let producer = broker.producer().await.unwrap();
    let big = || Message::new(vec![0u8; 101]);
    // To a queue that is there, and to one that is not: the size is checked first.
    for dest in [Destination::queue("q"), Destination::queue("nowhere")] {
        let m = big();
        let (id, expected) = (m.id().clone(), layer_error(&broker, &m));
        let TryEnqueue::Done(Err(e)) = producer.try_enqueue(&dest, m) else {
            panic!("try_enqueue took an oversize message for {dest}");
        };
        same_refusal(&e, &expected, &id);
        let m = big();
        let (id, expected) = (m.id().clone(), layer_error(&broker, &m));
        let e = producer.send(&dest, m).await.unwrap_err();
        same_refusal(&e, &expected, &id);
        let m = big();
        let (id, expected) = (m.id().clone(), layer_error(&broker, &m));
        let e = producer.enqueue(&dest, m).await.err().unwrap();
        same_refusal(&e, &expected, &id);
    }
    // A delayed one too (the delayed way is another path in the producer).
    let m = Message::builder(vec![0u8; 101])
        .delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let (id, expected) = (m.id().clone(), layer_error(&broker, &m));
    let e = producer
        .send(&Destination::queue("q"), m)
        .await
        .unwrap_err();
    same_refusal(&e, &expected, &id);
    assert_eq!(broker.queue_depth("q").unwrap().ready, 0);
    assert_eq!(broker.queue_depth("q").unwrap().delayed, 0);
    // Exactly at the limit it goes in: 64 payload bytes and the id's 36.
    let fits = Message::new(vec![0u8; 64]);
    assert_eq!(fits.encoded_len(), 100);
    producer.send(&Destination::queue("q"), fits).await.unwrap();
    assert_eq!(broker.queue_depth("q").unwrap().ready, 1);
}

#[tokio::test]
async fn a_batch_refuses_only_its_oversize_message_in_its_place() {
    let broker = small_limit().await;
    let producer = broker.producer().await.unwrap();
    let batch = || {
        vec![
            Message::new("a"),
            Message::new(vec![0u8; 101]),
            Message::new("c"),
        ]
    };
    let mut messages = batch();
    let ids: Vec<_> = messages.iter().map(|m| m.id().clone()).collect();
    let expected = layer_error(&broker, &messages[1]);
    let mut pending = Vec::new();
    producer
        .enqueue_batch(&Destination::queue("q"), &mut messages, &mut pending)
        .await;
    assert_eq!(pending.len(), 3);
    let mut pending = pending.into_iter();
    assert_eq!(pending.next().unwrap().unwrap().await.unwrap().id, ids[0]);
    same_refusal(&pending.next().unwrap().err().unwrap(), &expected, &ids[1]);
    assert_eq!(pending.next().unwrap().unwrap().await.unwrap().id, ids[2]);

    let messages = batch();
    let ids: Vec<_> = messages.iter().map(|m| m.id().clone()).collect();
    let expected = layer_error(&broker, &messages[1]);
    let results = producer
        .send_batch(&Destination::queue("q"), messages)
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().id, ids[0]);
    same_refusal(results[1].as_ref().unwrap_err(), &expected, &ids[1]);
    assert_eq!(results[2].as_ref().unwrap().id, ids[2]);

    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    assert_eq!(drain_now(&mut consumer).await, ["a", "c", "a", "c"]);
}

#[tokio::test]
async fn the_capability_layer_leaves_the_memory_producer_to_refuse_itself() {
    let backend = mailroom_memory::MemoryFactory
        .connect("memory://?max_message_size=100")
        .await
        .unwrap();
    // The bare backend says so, and the refusal through the layer is still the same.
    assert!(MemoryBackend::new().producer_refuses_unsupported());
    backend
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    let producer = backend.producer().await.unwrap();
    let m = Message::new(vec![0u8; 101]);
    let id = m.id().clone();
    let e = producer
        .send(&Destination::queue("q"), m)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(e.undelivered().map(Message::id), Some(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_producer_gets_room_made_above_the_low_water_mark_when_the_consumer_stops() {
    // A held producer is woken once a quarter of the bound has drained; a consumer that takes
    // one message from a full queue of 100 and stops leaves it above that mark, and the
    // producer must still get the slot.
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q").max_length(100, Overflow::Backpressure))
        .await
        .unwrap();
    let dest = Destination::queue("q");
    let producer = broker.producer().await.unwrap();
    let mut messages = numbered(0..100);
    let mut pending = Vec::new();
    producer
        .enqueue_batch(&dest, &mut messages, &mut pending)
        .await;
    assert_eq!(broker.queue_depth("q").unwrap().ready, 100);
    let sender = {
        let producer = broker.producer().await.unwrap();
        let dest = dest.clone();
        tokio::spawn(async move { producer.send(&dest, Message::new("late")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!sender.is_finished(), "the queue is full: the send waits");
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    let taken = consumer.try_receive().expect("a message is ready").unwrap();
    taken.ack().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), sender)
        .await
        .expect("a held producer was left waiting with room in the queue")
        .unwrap()
        .unwrap();
    assert_eq!(broker.queue_depth("q").unwrap().ready, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_producer_waiting_on_a_full_queue_gets_the_room_that_is_made() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q").max_length(3, Overflow::Backpressure))
        .await
        .unwrap();
    let dest = Destination::queue("q");
    let first = broker.producer().await.unwrap();
    for body in ["1", "2", "3"] {
        first.send(&dest, Message::new(body)).await.unwrap();
    }
    // Three producers wait for room; then three messages are taken at once, with nothing
    // taken after: each waiting producer must get in on the room those three made.
    let mut waiting = Vec::new();
    for body in ["a", "b", "c"] {
        let producer = broker.producer().await.unwrap();
        let dest = dest.clone();
        waiting.push(tokio::spawn(async move {
            producer.send(&dest, Message::new(body)).await
        }));
    }
    // Long enough for all three to be waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut consumer = broker.consumer("q", Default::default()).await.unwrap();
    for _ in 0..3 {
        let d = consumer.try_receive().expect("a message is ready").unwrap();
        d.ack().await.unwrap();
    }
    for sender in waiting {
        tokio::time::timeout(Duration::from_secs(5), sender)
            .await
            .expect("a waiting producer was left waiting with room in the queue")
            .unwrap()
            .unwrap();
    }
    let mut rest = drain_now(&mut consumer).await;
    rest.sort();
    assert_eq!(rest, ["a", "b", "c"]);
}
