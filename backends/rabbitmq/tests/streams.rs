//! RabbitMQ streams (`?queue_type=stream`) against the real broker on 127.0.0.1:5672: the
//! conformance suite with the replay case run, a restarted consumer resuming after its last
//! ack, and replay from an offset, a time and the latest position.
//!
//! Streams are read over AMQP 0-9-1 here: the broker needs no plugin for that
//! (`rabbitmq_stream` is only the stream protocol on port 5552).

mod common;

use std::time::Duration;

use common::{unique, within, Waypoints};
use mailroom_core::{
    Backend, Consumer, ConsumerOptions, Delivery, Destination, ErrorKind, Message, QueueSpec,
    Registry, Replay, Timestamp,
};
use mailroom_rabbitmq::{RabbitBackend, RabbitFactory};
use mailroom_testkit::Conformance;

/// The broker under test, as streams; `MAILROOM_RABBITMQ_URL` overrides the broker.
fn url() -> String {
    let base = std::env::var("MAILROOM_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let join = if base.contains('?') { '&' } else { '?' };
    format!("{base}{join}queue_type=stream")
}

/// How long one expected delivery may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(15);
/// How long to wait to be sure nothing more comes.
const QUIET: Duration = Duration::from_millis(700);
/// Each test's overall bound.
const TEST_BOUND: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_streams_pass_the_conformance_suite_with_replay() {
    let waypoints = Waypoints::default();
    waypoints.at(
        "suite",
        "running the cases on streams (the testkit bounds each at 120 s)",
    );
    within(Duration::from_secs(600), &waypoints, async {
        let mut report = Conformance::new(|| async {
            Registry::new().with(RabbitFactory).connect(&url()).await
        })
        .run()
        .await;
        // Its own report file, beside the classic queues' one.
        report.backend = "rabbitmq-streams".into();
        report.print();
        report.assert_passed();
        assert!(
            report.passed().any(|r| r.name == "replay_from_earliest"),
            "the replay case must run on streams, not be skipped"
        );
        // What streams cannot do, each skipped by a capability the backend declares off.
        report.assert_skipped_only(&[
            "repeated_header_names_keep_every_value_in_order",
            "many_consumers_lose_nothing",
            "competing_consumers_share",
            "dropped_consumer_redelivers",
            "transaction_commits_or_aborts_as_one",
            "dead_letter_on_nack",
            "dead_letter_after_max_attempts",
            "delayed_delivery",
            "message_ttl_expires",
            "bounded_queue_rejects",
            "leader_confirmed_sends_arrive",
        ]);
    })
    .await;
}

async fn backend() -> RabbitBackend {
    RabbitBackend::from_url(&url()).await.expect("connect")
}

/// A fresh stream with `n` messages `m0..` sent to it, in order.
async fn stream_with(backend: &RabbitBackend, what: &str, n: usize) -> String {
    let q = unique(&format!("mr-stream-{what}"));
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .expect("declare the stream");
    send(backend, &q, 0..n).await;
    q
}

async fn send(backend: &RabbitBackend, q: &str, range: std::ops::Range<usize>) {
    let producer = backend.producer().await.expect("producer");
    for i in range {
        let m = Message::builder(format!("m{i}"))
            .timestamp_now()
            .build()
            .expect("message");
        producer
            .send(&Destination::queue(q), m)
            .await
            .expect("send");
    }
    producer.close().await.expect("close the producer");
}

async fn consumer(backend: &RabbitBackend, q: &str, replay: Option<Replay>) -> Box<dyn Consumer> {
    let mut options = ConsumerOptions::default();
    if let Some(replay) = replay {
        options = options.replay(replay);
    }
    backend.consumer(q, options).await.expect("consumer")
}

async fn next(c: &mut Box<dyn Consumer>, what: &str) -> Delivery {
    c.receive_timeout(WAIT)
        .await
        .expect("receive")
        .unwrap_or_else(|| panic!("no delivery within {WAIT:?}: expected {what}"))
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(d.message().payload()).into_owned()
}

/// Receive and ack until nothing more comes; the bodies in order.
async fn drain(c: &mut Box<dyn Consumer>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(d) = c.receive_timeout(QUIET).await.expect("receive") {
        seen.push(body(&d));
        d.ack().await.expect("ack");
    }
    seen
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_after_its_last_ack() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "acking 4 of 10, then restarting the consumer");
    within(TEST_BOUND, &waypoints, async {
        let backend = backend().await;
        let q = stream_with(&backend, "resume", 10).await;
        let mut first = consumer(&backend, &q, None).await;
        for i in 0..4 {
            let d = next(&mut first, &format!("m{i}")).await;
            assert_eq!(body(&d), format!("m{i}"));
            assert_eq!(d.info().consumer_group.as_deref(), Some(q.as_str()));
            d.ack().await.expect("ack");
        }
        // Delivered but never acked: the restarted consumer must read it again.
        let held = next(&mut first, "m4").await;
        assert_eq!(body(&held), "m4");
        drop(held);
        first.close().await.expect("close");

        waypoints.at("test", "the restarted consumer reads from m4");
        let mut again = consumer(&backend, &q, None).await;
        assert_eq!(drain(&mut again).await, names(4..10));
        again.close().await.expect("close");

        waypoints.at("test", "a third consumer finds everything acked");
        let mut third = consumer(&backend, &q, None).await;
        assert_eq!(
            third
                .receive_timeout(QUIET)
                .await
                .expect("receive")
                .map(|d| body(&d)),
            None
        );
        send(&backend, &q, 10..12).await;
        assert_eq!(drain(&mut third).await, names(10..12));
        third.close().await.expect("close");
        backend.topology().delete_queue(&q).await.expect("delete");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_order_ack_does_not_move_the_position_past_an_unacked_message() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "acking m0, m1 and m3 but not m2");
    within(TEST_BOUND, &waypoints, async {
        let backend = backend().await;
        let q = stream_with(&backend, "gap", 5).await;
        let mut first = consumer(&backend, &q, None).await;
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(next(&mut first, &format!("m{i}")).await);
        }
        let m2 = held.remove(2);
        for d in held {
            d.ack().await.expect("ack");
        }
        drop(m2);
        first.close().await.expect("close");
        // At least once: m3 was acked, but after the gap at m2.
        let mut again = consumer(&backend, &q, None).await;
        assert_eq!(drain(&mut again).await, names(2..5));
        again.close().await.expect("close");
        backend.topology().delete_queue(&q).await.expect("delete");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_dropped_without_close_loses_nothing_on_restart() {
    let waypoints = Waypoints::default();
    waypoints.at(
        "test",
        "acking 3 of 6, then dropping the consumer as in a crash",
    );
    within(TEST_BOUND, &waypoints, async {
        let backend = backend().await;
        let q = stream_with(&backend, "crash", 6).await;
        let mut first = consumer(&backend, &q, None).await;
        for i in 0..3 {
            next(&mut first, &format!("m{i}"))
                .await
                .ack()
                .await
                .expect("ack");
        }
        drop(first);
        let mut again = consumer(&backend, &q, None).await;
        let seen = drain(&mut again).await;
        // The position writes may still be in flight: at least m3.. comes again, in order,
        // and what comes before it is a redelivery of acked messages, never a gap.
        let from = names(0..6)
            .iter()
            .position(|n| Some(n) == seen.first())
            .expect("the restarted consumer read something");
        assert!(from <= 3, "resumed at m{from}, after the last ack (m2)");
        assert_eq!(seen, names(from..6));
        again.close().await.expect("close");
        backend.topology().delete_queue(&q).await.expect("delete");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_an_offset_a_time_and_the_latest_position() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "reading the offsets of 6 messages");
    within(TEST_BOUND, &waypoints, async {
        let backend = backend().await;
        let q = stream_with(&backend, "replay", 6).await;
        let mut first = consumer(&backend, &q, None).await;
        let mut offsets = Vec::new();
        for i in 0..6 {
            let d = next(&mut first, &format!("m{i}")).await;
            offsets.push(d.info().offset.expect("a stream delivery has an offset"));
            d.ack().await.expect("ack");
        }
        first.close().await.expect("close");
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

        waypoints.at("test", "replaying from the offset of m3");
        let mut from_offset = consumer(&backend, &q, Some(Replay::Offset(offsets[3]))).await;
        assert_eq!(drain(&mut from_offset).await, names(3..6));
        from_offset.close().await.expect("close");

        waypoints.at("test", "replaying from a time between m5 and m6");
        // Past the broker's one-second resolution, so the time falls between two chunks too.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let between = Timestamp::now();
        send(&backend, &q, 6..9).await;
        let mut from_time = consumer(&backend, &q, Some(Replay::Time(between))).await;
        assert_eq!(drain(&mut from_time).await, names(6..9));
        from_time.close().await.expect("close");

        waypoints.at("test", "replaying from the latest position");
        let mut latest = consumer(&backend, &q, Some(Replay::Latest)).await;
        assert_eq!(
            latest
                .receive_timeout(QUIET)
                .await
                .expect("receive")
                .map(|d| body(&d)),
            None
        );
        send(&backend, &q, 9..11).await;
        assert_eq!(drain(&mut latest).await, names(9..11));
        latest.close().await.expect("close");

        let err = match backend
            .consumer(&q, ConsumerOptions::default().replay(Replay::Offset(-1)))
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("a negative offset was accepted"),
        };
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        backend.topology().delete_queue(&q).await.expect("delete");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_a_classic_queue_is_unsupported_and_named() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "asking a classic queue for a replay");
    within(TEST_BOUND, &waypoints, async {
        let backend = backend().await;
        let q = unique("mr-stream-classic");
        let spec = QueueSpec::new(&q).extra("x-queue-type", "classic");
        backend
            .topology()
            .declare_queue(&spec)
            .await
            .expect("declare");
        let err = match backend
            .consumer(&q, ConsumerOptions::default().replay(Replay::Earliest))
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("a replay on a classic queue was accepted"),
        };
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("not a stream"), "{err}");
        backend.topology().delete_queue(&q).await.expect("delete");
    })
    .await;
}

/// Everything logged in this test binary, so a test can look for its own queues' lines.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log of this binary (installed once; the tests run in one process).
fn captured() -> Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        captured
    })
    .clone()
}

impl Captured {
    /// The ERROR lines that name `what`.
    fn errors_naming(&self, what: &str) -> Vec<String> {
        let text =
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        text.lines()
            .filter(|l| l.contains("ERROR") && l.contains(what))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_stream_while_its_consumer_acks_leaves_no_position_queue_and_no_error() {
    let log = captured();
    let waypoints = Waypoints::default();
    waypoints.at("test", "a consumer acks a stream of 400");
    within(TEST_BOUND, &waypoints, async {
        let backend = backend().await;
        let q = stream_with(&backend, "delete-acking", 400).await;
        let position = mailroom_rabbitmq::stream_position_queue(&q);
        let mut c = consumer(&backend, &q, None).await;
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = acked.clone();
        let acking = tokio::spawn(async move {
            // Until the deletion ends the consumer (an error, or nothing more comes).
            while let Ok(Some(d)) = c.receive_timeout(QUIET).await {
                if d.ack().await.is_err() {
                    break;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            c
        });
        let started = std::time::Instant::now();
        while acked.load(std::sync::atomic::Ordering::Relaxed) < 20 {
            assert!(
                started.elapsed() < WAIT,
                "the consumer acked fewer than 20 in {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        waypoints.at("test", "deleting the stream while its consumer acks");
        backend.topology().delete_queue(&q).await.expect("delete");
        waypoints.at("test", "waiting for the consumer to stop");
        let mut c = acking.await.expect("the acking task");
        c.close().await.expect("close after the stream was deleted");
        // Room for a late position write to land, if one were still under way.
        tokio::time::sleep(QUIET).await;

        waypoints.at("test", "the same backend still works");
        let next_q = stream_with(&backend, "delete-after", 3).await;
        let mut again = consumer(&backend, &next_q, None).await;
        assert_eq!(drain(&mut again).await, names(0..3));
        again.close().await.expect("close");
        backend
            .topology()
            .delete_queue(&next_q)
            .await
            .expect("delete");

        let errors: Vec<String> = [&q, &next_q]
            .iter()
            .flat_map(|s| log.errors_naming(&format!("stream-position.{s}")))
            .collect();
        assert!(
            errors.is_empty(),
            "a stream's position queue showed up in ERROR logs:\n{}",
            errors.join("\n")
        );

        // Last: the passive declare that finds the queue missing logs a channel error itself.
        waypoints.at(
            "test",
            "the position queue is gone, even after a late write",
        );
        let left = backend.topology().queue_depth(&position).await;
        assert_eq!(
            left.as_ref().map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "position queue '{position}' outlived its stream: {left:?}"
        );

        assert_eq!(
            backend
                .topology()
                .queue_depth(&mailroom_rabbitmq::stream_position_queue(&next_q))
                .await
                .map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "the second stream's position queue outlived it"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_a_missing_stream_leaves_no_position_queue() {
    let waypoints = Waypoints::default();
    waypoints.at("test", "opening a consumer on a stream that does not exist");
    within(TEST_BOUND, &waypoints, async {
        let backend = backend().await;
        let q = unique("mr-stream-missing");
        let opened = backend.consumer(&q, ConsumerOptions::default()).await;
        assert_eq!(
            opened.err().map(|e| e.kind()),
            Some(ErrorKind::NotFound),
            "a consumer of missing stream '{q}' must fail NotFound"
        );
        let position = mailroom_rabbitmq::stream_position_queue(&q);
        assert_eq!(
            backend
                .topology()
                .queue_depth(&position)
                .await
                .map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "position queue '{position}' outlived a failed open"
        );
    })
    .await;
}
