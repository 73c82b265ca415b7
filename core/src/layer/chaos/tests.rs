//! Unit tests of the chaos layer.

use std::time::Instant;

use super::super::test_support::{confirmed, delivery, everything, layered, now, Log, Stub};
use super::super::LayerStack;
use super::*;
use crate::consumer::MockConsumer;
use crate::producer::MockProducer;

fn under(chaos: &ChaosLayer, stub: Stub) -> Arc<dyn Backend> {
    layered(stub, LayerStack::new().layer(chaos.clone()))
}

fn passing_producer() -> MockProducer {
    let mut producer = MockProducer::new();
    producer
        .expect_enqueue()
        .returning(|_, m| Ok(confirmed(&m)));
    producer
}

#[tokio::test]
async fn the_nth_send_and_the_first_confirms_fail_as_planned() {
    let chaos = ChaosLayer::new(1)
        .inject(
            Operation::Send,
            When::Nth(2),
            Fault::Fail(ErrorKind::QueueFull),
        )
        .inject(
            Operation::Confirm,
            When::First(1),
            Fault::FailLosingMessage(ErrorKind::Timeout),
        );
    let backend = under(
        &chaos,
        Stub::new(everything()).with_producer(passing_producer()),
    );
    let producer = backend.producer().await.unwrap();
    let dest = Destination::queue("q");
    let first = producer.enqueue(&dest, Message::new("1")).await.unwrap();
    let lost = first.await.unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::Timeout);
    assert!(lost.undelivered().is_none());
    let refused = producer
        .enqueue(&dest, Message::new("2"))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::QueueFull);
    assert!(refused.undelivered().is_some(), "the message comes back");
    assert!(refused.message().contains("send #2"), "{refused}");
    producer.send(&dest, Message::new("3")).await.unwrap();
    assert_eq!(
        chaos.counts(Operation::Send),
        ChaosCounts { seen: 3, passed: 2 }
    );
    assert_eq!(
        chaos.counts(Operation::Confirm),
        ChaosCounts { seen: 2, passed: 1 }
    );
}

#[test]
fn the_same_seed_picks_the_same_operations() {
    let picks = |seed| {
        let chaos = Chaos::new(seed);
        (1..=200)
            .filter(|n| chaos.picks(When::Chance(0.1), Operation::Receive, *n))
            .collect::<Vec<_>>()
    };
    assert_eq!(picks(42), picks(42));
    assert_ne!(picks(42), picks(43));
    let hits = picks(42).len();
    assert!((5..=40).contains(&hits), "{hits} of 200 at 10%");
    let every = Chaos::new(0);
    assert!(every.picks(When::Every(3), Operation::Ack, 6));
    assert!(!every.picks(When::Every(3), Operation::Ack, 7));
}

#[tokio::test]
async fn throttled_confirms_come_one_at_a_time() {
    const STEP: Duration = Duration::from_millis(20);
    let chaos = ChaosLayer::new(0).inject(Operation::Confirm, When::Always, Fault::Throttle(STEP));
    let backend = under(
        &chaos,
        Stub::new(everything()).with_producer(passing_producer()),
    );
    let producer = backend.producer().await.unwrap();
    let started = Instant::now();
    let mut confirms = Vec::new();
    for i in 0..3 {
        let m = Message::new(i.to_string());
        confirms.push(producer.enqueue(&Destination::queue("q"), m).await.unwrap());
    }
    assert!(started.elapsed() < STEP, "handing over does not wait");
    futures_util::future::try_join_all(confirms).await.unwrap();
    assert!(started.elapsed() >= STEP * 3, "{:?}", started.elapsed());
}

#[test]
fn receive_faults_apply_in_order_and_try_receive_keeps_its_fast_path_otherwise() {
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_try_receive()
        .times(1)
        .returning(move || Some(Ok(delivery("x", &ready))));
    let chaos = ChaosLayer::new(0);
    let backend = under(&chaos, Stub::new(everything()).with_consumer(consumer));
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    assert!(consumer.try_receive().is_some());
    assert_eq!(chaos.counts(Operation::Receive).passed, 1);

    let mut consumer = MockConsumer::new();
    consumer.expect_try_receive().never();
    let again = log.clone();
    consumer
        .expect_receive()
        .times(1)
        .returning(move || Ok(delivery("y", &again)));
    let chaos = ChaosLayer::new(0).inject(Operation::Receive, When::Nth(1), Fault::Disconnect);
    let backend = under(&chaos, Stub::new(everything()).with_consumer(consumer));
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    assert!(consumer.try_receive().is_none(), "deferred to receive");
    let e = now(consumer.receive()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(e.is_temporary());
    now(consumer.receive()).unwrap();
}

#[test]
fn a_failed_ack_leaves_the_delivery_to_come_back() {
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_receive()
        .times(2)
        .returning(move || Ok(delivery("x", &ready)));
    let chaos = ChaosLayer::new(0).inject(Operation::Ack, When::Nth(1), Fault::Disconnect);
    let backend = under(&chaos, Stub::new(everything()).with_consumer(consumer));
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    let e = now(now(consumer.receive()).unwrap().ack()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection);
    now(now(consumer.receive()).unwrap().ack()).unwrap();
    assert_eq!(*log.lock().unwrap(), ["abandon", "ack"]);
}

#[test]
fn opening_can_fail_as_planned() {
    let chaos = ChaosLayer::new(0).inject(
        Operation::Open,
        When::Nth(1),
        Fault::Fail(ErrorKind::Connection),
    );
    let backend = under(
        &chaos,
        Stub::new(everything()).with_producer(passing_producer()),
    );
    let e = now(backend.producer()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert_eq!(e.backend(), Some("stub"));
    now(backend.producer()).unwrap();
}

#[test]
fn an_aborted_commit_rolls_back_first_and_a_fenced_one_commits_nothing() {
    use crate::transaction::{MockTransactional, TransactionCounts};

    let chaos = ChaosLayer::new(0)
        .inject(
            Operation::Commit,
            When::Nth(1),
            Fault::Fail(ErrorKind::Aborted),
        )
        .inject(
            Operation::Commit,
            When::Nth(2),
            Fault::Fail(ErrorKind::Fenced),
        );
    let mut unit = MockTransactional::new();
    unit.expect_abort().times(1).returning(|| Ok(()));
    unit.expect_commit()
        .times(1)
        .returning(|| Ok(TransactionCounts::default()));
    let stub = Stub::new(everything());
    let mut unit = chaos.transactional(&stub, "q", Box::new(unit));
    let aborted = now(unit.commit()).unwrap_err();
    assert_eq!(aborted.kind(), ErrorKind::Aborted);
    assert!(aborted.is_temporary());
    let fenced = now(unit.commit()).unwrap_err();
    assert_eq!(fenced.kind(), ErrorKind::Fenced);
    now(unit.commit()).unwrap();
    assert_eq!(
        chaos.counts(Operation::Commit),
        ChaosCounts { seen: 3, passed: 1 }
    );
}
