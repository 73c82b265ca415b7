//! A broker that goes silent without hanging up (a frozen host, a stalled path) or whose
//! connections are cut must not hold any call of the Kafka backend forever: send, flush and
//! close complete or fail with a temporary `Timeout` / `Connection` error (the message handed
//! back) within `message.timeout.ms` (plus `reconnect.backoff.max.ms` while connections are
//! refused); receive within its timeout; ack at once; consumer close, declare and delete within
//! `operation_timeout_ms`. Nothing confirmed is lost: what was not
//! committed is delivered again. Afterwards the same backend works again without a new connect.
//!
//! The backend connects through the testkit's relay on 127.0.0.1:9095 (what the broker's FAULTS
//! listener advertises, scripts/kafka/), forwarding to that listener on 127.0.0.1:9094, so every
//! connection librdkafka makes (bootstrap, then the broker from metadata) passes through it.
//! One test function runs both scenarios in turn: only one relay can bind 9095.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, ConsumerOptions, Delivery, Destination, Error, ErrorKind, Message, QueueSpec,
};
use mailroom_kafka::KafkaBackend;
use mailroom_testkit::relay::Relay;

/// `message.timeout.ms` of the backend under test: bounds a send's confirm, flush and close.
const MESSAGE_TIMEOUT: Duration = Duration::from_millis(4000);
/// `reconnect.backoff.max.ms` of the backend under test (librdkafka's default is 10 s). While
/// the broker refuses connections, librdkafka's broker thread sleeps its reconnect backoff
/// between timeout scans, so a record fails up to this much after `message.timeout.ms`
/// (measured with the default: 8.9 s for a 4 s message timeout).
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// `operation_timeout_ms` of the backend under test: bounds admin calls and consumer close.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(2000);
/// What `receive_timeout` is given while the broker is silent.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Scheduling room on a loaded two-core machine; small against the bounds.
const SLACK: Duration = Duration::from_millis(1500);
/// Steps on a healthy broker (group joins included).
const HEALTHY: Duration = Duration::from_secs(20);
/// From the relay's return until the backend works again: a reconnect plus, at worst, a group
/// rebalance waiting out the session timeout (10 s) of a member that could not leave.
const RECOVERY: Duration = Duration::from_secs(30);
/// The whole test, so that it can never hang CI.
const OVERALL: Duration = Duration::from_secs(150);

const DIRECT_URL: &str = "kafka://127.0.0.1:9092";
/// Where the relay listens: the address the broker's FAULTS listener advertises.
const RELAY_LISTEN: &str = "127.0.0.1:9095";
/// The FAULTS listener the relay forwards to.
const FAULTS_LISTENER: &str = "127.0.0.1:9094";

fn relay_url() -> String {
    format!(
        "kafka://{RELAY_LISTEN}?message.timeout.ms={}&operation_timeout_ms={}\
         &reconnect.backoff.max.ms={}",
        MESSAGE_TIMEOUT.as_millis(),
        OPERATION_TIMEOUT.as_millis(),
        RECONNECT_BACKOFF_MAX.as_millis()
    )
}

/// The step the test is at, so that the overall timeout can say what it was waiting on.
#[derive(Clone, Default)]
struct Steps(Arc<Mutex<String>>);

impl Steps {
    /// Run `fut`, which must finish within `bound`; print how long it took.
    async fn within<T>(
        &self,
        what: impl AsRef<str>,
        bound: Duration,
        fut: impl Future<Output = T>,
    ) -> T {
        let what = what.as_ref();
        what.clone_into(&mut self.0.lock().unwrap());
        let started = Instant::now();
        let out = tokio::time::timeout(bound, fut)
            .await
            .unwrap_or_else(|_| panic!("still waiting on {what} after {bound:?}"));
        eprintln!("{what}: {:?} (bound {bound:?})", started.elapsed());
        out
    }
}

#[track_caller]
fn assert_typed(what: &str, err: &Error) {
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connection) && err.is_temporary(),
        "{what}: expected a temporary Timeout or Connection error, got {:?} (temporary: {}): {err}",
        err.kind(),
        err.is_temporary()
    );
}

#[track_caller]
fn assert_handed_back(what: &str, result: Result<impl std::fmt::Debug, Error>, sent: &Message) {
    let err = result.expect_err(what);
    assert_typed(what, &err);
    assert_eq!(
        err.undelivered().map(Message::id),
        Some(sent.id()),
        "{what}: the message comes back inside the error"
    );
}

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(d.message().payload()).into_owned()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Freeze,
    Cut,
}

impl Fault {
    fn apply(self, relay: &Relay) {
        match self {
            Fault::Freeze => relay.stall(),
            Fault::Cut => relay.cut(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_bounded_when_the_broker_freezes_or_is_cut() {
    let steps = Steps::default();
    let run = async {
        let relay = Relay::builder(FAULTS_LISTENER)
            .listen(RELAY_LISTEN)
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot bind the relay on {RELAY_LISTEN} (is another test using it?): {e}")
            });
        scenario(&steps, &relay, Fault::Freeze).await;
        scenario(&steps, &relay, Fault::Cut).await;
    };
    if tokio::time::timeout(OVERALL, run).await.is_err() {
        panic!(
            "the silent-peer test did not finish within {OVERALL:?}; it was waiting on {}",
            steps.0.lock().unwrap()
        );
    }
}

async fn scenario(steps: &Steps, relay: &Relay, fault: Fault) {
    let name = format!("{fault:?}").to_lowercase();
    let step = |what: &str| format!("{name}: {what}");
    let direct = steps
        .within(
            step("connect directly"),
            HEALTHY,
            KafkaBackend::from_url(DIRECT_URL),
        )
        .await
        .unwrap();
    let queue = format!(
        "mr-silent-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let dest = Destination::queue(&queue);
    steps
        .within(
            step("declare the queue directly"),
            HEALTHY,
            direct
                .topology()
                .declare_queue(&QueueSpec::new(&queue).partitions(1)),
        )
        .await
        .unwrap();

    // A healthy start through the relay: traffic flows both ways.
    let b = steps
        .within(
            step("connect through the relay"),
            HEALTHY,
            KafkaBackend::from_url(&relay_url()),
        )
        .await
        .unwrap();
    let p = b.producer().await.unwrap();
    let p2 = b.producer().await.unwrap();
    let mut confirmed = Vec::new();
    for (producer, payload) in [
        (&p, "healthy-1"),
        (&p, "healthy-2"),
        (&p, "healthy-3"),
        (&p2, "healthy-4"),
    ] {
        steps
            .within(
                step("healthy send"),
                HEALTHY,
                producer.send(&dest, Message::new(payload)),
            )
            .await
            .unwrap();
        confirmed.push(payload.to_owned());
    }
    let mut c1 = steps
        .within(
            step("open a consumer"),
            HEALTHY,
            b.consumer(&queue, ConsumerOptions::default()),
        )
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            steps
                .within(step("healthy receive"), HEALTHY, c1.receive())
                .await
                .unwrap(),
        );
    }
    let mut acked = HashSet::new();
    for d in held.drain(..2) {
        acked.insert(text(&d));
        d.ack().await.unwrap();
    }

    fault.apply(relay);

    // Sends: one awaited, one enqueued then flushed, one enqueued then its producer closed.
    let enqueued = Message::new(format!("{name}-enqueued"));
    let pending = steps
        .within(step("enqueue"), SLACK, p.enqueue(&dest, enqueued.clone()))
        .await
        .unwrap();
    let closing = Message::new(format!("{name}-closing"));
    let pending2 = steps
        .within(
            step("enqueue on the 2nd producer"),
            SLACK,
            p2.enqueue(&dest, closing.clone()),
        )
        .await
        .unwrap();
    let sent = Message::new(format!("{name}-sent"));
    let bound = MESSAGE_TIMEOUT + RECONNECT_BACKOFF_MAX + SLACK;
    let (send, flush, close) = tokio::join!(
        steps.within(step("send"), bound, p.send(&dest, sent.clone())),
        steps.within(step("producer flush"), bound, p.flush()),
        steps.within(step("producer close"), bound, p2.close()),
    );
    assert_handed_back(&step("send"), send, &sent);
    flush.unwrap();
    close.unwrap();
    let confirm = steps.within(step("enqueued confirm"), SLACK, pending).await;
    assert_handed_back(&step("enqueued confirm"), confirm, &enqueued);
    let confirm = steps
        .within(step("closed producer's confirm"), SLACK, pending2)
        .await;
    assert_handed_back(&step("closed producer's confirm"), confirm, &closing);

    // Consumer: receive ends by its timeout, ack at once, close within the operation timeout.
    let got = steps
        .within(
            step("receive_timeout"),
            RECEIVE_TIMEOUT + SLACK,
            c1.receive_timeout(RECEIVE_TIMEOUT),
        )
        .await
        .unwrap();
    assert!(
        got.is_none(),
        "{}: nothing new was sent",
        step("receive_timeout")
    );
    let d3 = held.remove(0);
    acked.insert(text(&d3));
    steps.within(step("ack"), SLACK, d3.ack()).await.unwrap();
    let closed = steps
        .within(
            step("consumer close"),
            OPERATION_TIMEOUT + SLACK,
            c1.close(),
        )
        .await;
    if let Err(e) = &closed {
        assert_typed(&step("consumer close"), e);
    }
    // Never settled: delivered again to the next member.
    drop(held);

    // Topology.
    let other = format!("{queue}-other");
    let declared = steps
        .within(
            step("declare"),
            OPERATION_TIMEOUT + SLACK,
            b.topology()
                .declare_queue(&QueueSpec::new(&other).partitions(1)),
        )
        .await;
    assert_typed(&step("declare"), &declared.expect_err("declare fails"));
    let deleted = steps
        .within(
            step("delete"),
            OPERATION_TIMEOUT + SLACK,
            b.topology().delete_queue(&other),
        )
        .await;
    assert_typed(&step("delete"), &deleted.expect_err("delete fails"));

    // Recovery, on the same backend.
    relay.heal();
    let back = Message::new(format!("{name}-after"));
    steps
        .within(
            step("send after recovery"),
            RECOVERY,
            p.send(&dest, back.clone()),
        )
        .await
        .unwrap();
    confirmed.push(format!("{name}-after"));
    let mut c3 = steps
        .within(
            step("open a consumer after recovery"),
            RECOVERY,
            b.consumer(&queue, ConsumerOptions::default()),
        )
        .await
        .unwrap();
    // Everything confirmed and not acked comes back (what was acked may too: at least once).
    let want: HashSet<String> = confirmed
        .iter()
        .filter(|p| !acked.contains(*p))
        .cloned()
        .collect();
    let mut seen = HashSet::new();
    let mut last = None;
    let deadline = Instant::now() + RECOVERY;
    while !want.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = steps
            .within(
                format!(
                    "{name}: receive after recovery (missing {:?})",
                    want.difference(&seen)
                ),
                left,
                c3.receive(),
            )
            .await
            .unwrap();
        seen.insert(text(&d));
        if d.message().id() == back.id() {
            last = Some(d);
        } else {
            d.ack().await.unwrap();
        }
    }
    let last = last.expect("the message sent after recovery");

    // Backend close with a requeue in flight (the dropped delivery is copied back by the
    // backend's internal producer), then the consumer's close, both during the fault.
    fault.apply(relay);
    drop(last);
    steps
        .within(
            step("backend close"),
            MESSAGE_TIMEOUT + RECONNECT_BACKOFF_MAX + SLACK,
            b.close(),
        )
        .await
        .unwrap();
    let closed = steps
        .within(
            step("2nd consumer close"),
            OPERATION_TIMEOUT + SLACK,
            c3.close(),
        )
        .await;
    if let Err(e) = &closed {
        assert_typed(&step("2nd consumer close"), e);
    }
    relay.heal();

    // The dropped delivery was neither committed nor requeued: a new member receives it.
    let mut check = steps
        .within(
            step("open a direct consumer"),
            HEALTHY,
            direct.consumer(&queue, ConsumerOptions::default()),
        )
        .await
        .unwrap();
    loop {
        let d = steps
            .within(
                step("the dropped delivery comes back"),
                RECOVERY,
                check.receive(),
            )
            .await
            .unwrap();
        let got = text(&d);
        d.ack().await.unwrap();
        if got == format!("{name}-after") {
            break;
        }
    }
    check.close().await.unwrap();
    let _ = direct.topology().delete_queue(&queue).await;
    drop((p, p2));
}
