//! Unit tests of the retry layer.

use std::sync::atomic::{AtomicU32, Ordering};

use super::super::test_support::{confirmed, everything, layered, Stub};
use super::super::LayerStack;
use super::*;
use crate::producer::MockProducer;
use crate::ErrorKind;

const QUICK: Duration = Duration::from_millis(1);

fn retrying(producer: MockProducer) -> Box<dyn Producer> {
    let stack =
        LayerStack::new().layer(RetryLayer::new().backoff(Backoff::new(QUICK, QUICK * 2, 3)));
    let backend = layered(Stub::new(everything()).with_producer(producer), stack);
    futures_util::FutureExt::now_or_never(backend.producer())
        .unwrap()
        .unwrap()
}

fn timeout(message: Message) -> Error {
    Error::new(ErrorKind::Timeout, "no confirm in time").with_undelivered(message)
}

#[test]
fn the_wait_doubles_up_to_its_bound() {
    let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350), 4);
    let waits: Vec<_> = (1..=4).map(|r| b.delay(r).as_millis()).collect();
    assert_eq!(waits, [100, 200, 350, 350]);
    assert_eq!(b.total(), Duration::from_millis(1000));
    assert_eq!(Backoff::default().retries(), DEFAULT_RETRIES);
    assert_eq!(b.delay(200), Duration::from_millis(350), "no overflow");
}

#[tokio::test]
async fn a_temporary_refusal_is_retried_with_the_message_it_returned() {
    let original = Message::new("payload");
    let (id, bytes) = (original.id().clone(), original.payload().as_ptr() as usize);
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let mut producer = MockProducer::new();
    producer.expect_enqueue().times(3).returning(move |_, m| {
        // The very message sent first, its bytes never copied.
        assert_eq!(m.payload().as_ptr() as usize, bytes);
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(timeout(m))
        } else {
            Ok(confirmed(&m))
        }
    });
    let producer = retrying(producer);
    let receipt = producer
        .enqueue(&Destination::queue("q"), original)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(receipt.id, id);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_failed_confirm_still_to_come_is_retried_when_it_fails() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let mut producer = MockProducer::new();
    producer.expect_enqueue().times(2).returning(move |_, m| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Ok(PendingConfirm::waiting(async move { Err(timeout(m)) }))
        } else {
            Ok(confirmed(&m))
        }
    });
    let producer = retrying(producer);
    let confirm = producer
        .enqueue(&Destination::queue("q"), Message::new("x"))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the retry waits for the confirm"
    );
    confirm.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn permanent_errors_and_errors_without_the_message_are_not_retried() {
    let mut producer = MockProducer::new();
    let mut turn = 0;
    producer.expect_enqueue().times(2).returning(move |_, m| {
        turn += 1;
        Err(if turn == 1 {
            Error::new(ErrorKind::Rejected, "nacked").with_undelivered(m)
        } else {
            Error::new(ErrorKind::Timeout, "lost it")
        })
    });
    let producer = retrying(producer);
    let dest = Destination::queue("q");
    let e = producer
        .enqueue(&dest, Message::new("a"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.undelivered().is_some(), "the message still comes back");
    let e = producer
        .enqueue(&dest, Message::new("b"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn retries_stop_at_the_bound_with_the_last_error_and_its_message() {
    let mut producer = MockProducer::new();
    producer
        .expect_send()
        .times(1)
        .returning(|_, m| Err(timeout(m)));
    // Three retries after the first try.
    producer
        .expect_enqueue()
        .times(3)
        .returning(|_, m| Err(timeout(m)));
    let producer = retrying(producer);
    let e = producer
        .send(&Destination::queue("q"), Message::new("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(e.undelivered().is_some());
}

#[tokio::test]
async fn batches_go_as_batches_and_only_their_failures_are_retried() {
    let mut producer = MockProducer::new();
    producer
        .expect_enqueue_batch()
        .times(1)
        .returning(|_, messages, pending| {
            for (i, m) in messages.drain(..).enumerate() {
                pending.push(if i == 1 {
                    Err(timeout(m))
                } else {
                    Ok(confirmed(&m))
                });
            }
        });
    // One resend for each batch's failed message.
    producer
        .expect_enqueue()
        .times(2)
        .returning(|_, m| Ok(confirmed(&m)));
    producer
        .expect_send_batch()
        .times(1)
        .returning(|_, messages| {
            Ok(messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    if i == 0 {
                        Err(timeout(m))
                    } else {
                        Ok(Receipt::new(m.id().clone()))
                    }
                })
                .collect())
        });
    let producer = retrying(producer);
    let dest = Destination::queue("q");
    let mut messages = vec![Message::new("a"), Message::new("b"), Message::new("c")];
    let mut pending = Vec::new();
    producer
        .enqueue_batch(&dest, &mut messages, &mut pending)
        .await;
    assert_eq!(pending.len(), 3);
    for p in pending {
        p.unwrap().await.unwrap();
    }
    let results = producer
        .send_batch(&dest, vec![Message::new("d"), Message::new("e")])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}
