//! An endpoint that stops answering without hanging up (a frozen host, a stalled network path,
//! a proxy that stalls or drops an answer half way) must not hold any call of the backend
//! forever: every send, receive, settle and close completes, or fails with a temporary `Timeout`
//! or `Connection` error, within a bound derived from `connect_timeout_ms`,
//! `operation_timeout_ms` and `wait_time_ms`; and nothing accepted before the silence is lost.
//!
//! The testkit's loopback TCP relay sits between the backend and fauxqs (scripts/brokers.sh)
//! and, on command, swallows everything in both directions while holding the sockets open, or passes an
//! answer up to the middle of its head or the start of its body and then stalls or hangs up.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, Consumer, ConsumerOptions, Delivery, Destination, Error, ErrorKind, Message, Nack,
    Producer, QueueSpec,
};
use mailroom_sqs::{SqsBackend, SqsConfig, SqsConsumer, DEFAULT_URL};
use mailroom_testkit::relay::{Direction, Hook, Relay as TestkitRelay, Step, StreamHook};
use tokio::net::TcpStream;

/// The timeouts a test configures; its bounds are derived from them.
#[derive(Clone, Copy)]
struct Timeouts {
    connect_ms: u64,
    operation_ms: u64,
    wait_ms: u64,
}

impl Timeouts {
    /// What one SDK call may take, retries included: the backend gives every call the
    /// operation timeout plus the long-poll wait.
    fn call(self) -> Duration {
        Duration::from_millis(self.operation_ms + self.wait_ms)
    }
}

/// Short, so that a test of many calls that each run into their timeout stays short.
const SHORT: Timeouts = Timeouts {
    connect_ms: 500,
    operation_ms: 1000,
    wait_ms: 1000,
};
/// Long enough that the SDK's own retries of a broken answer (three attempts, a few seconds
/// of backoff) run out before the operation timeout, so the error seen is the answer's own.
const RETRIES_FIRST: Timeouts = Timeouts {
    connect_ms: 500,
    operation_ms: 10_000,
    wait_ms: 1000,
};
/// Long enough that the SDK's stalled-stream protection (a body that delivers nothing for its
/// 5 s grace period, three attempts) ends a stalled answer before the operation timeout does.
const PAST_GRACE: Timeouts = Timeouts {
    connect_ms: 500,
    operation_ms: 30_000,
    wait_ms: 0,
};

/// Scheduling room on a loaded two-core machine; small against the calls' bounds.
const SLACK: Duration = Duration::from_millis(1500);
/// Bound on a whole test, so that it can never hang CI whatever the library does.
const OVERALL: Duration = Duration::from_secs(120);

/// Pass everything both ways.
const FORWARD: u8 = 0;
/// Swallow both ways and hold the sockets open; new connections are accepted and held unread.
const SILENT: u8 = 1;
/// Pass the first bytes of an answer's status line, then hold the sockets open.
const STALL_HEAD: u8 = 2;
/// Pass an answer's head and one byte of its body, then hold the sockets open.
const STALL_BODY: u8 = 3;
/// Pass the first bytes of an answer's status line, then hang up.
const CUT_HEAD: u8 = 4;
/// Pass an answer's head and one byte of its body, then hang up.
const CUT_BODY: u8 = 5;

fn sqs_url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn upstream() -> SocketAddr {
    let endpoint = SqsConfig::from_url(&sqs_url())
        .unwrap()
        .endpoint
        .expect("the silent-peer tests need a local SQS endpoint (MAILROOM_SQS_URL)");
    let host = endpoint
        .strip_prefix("http://")
        .expect("the relay passes plain HTTP only");
    // A loopback name or address: resolving it does not block for long.
    host.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("the SQS endpoint's address")
}

/// The testkit's relay to fauxqs, with a hook on the answers that breaks them off in the
/// current mode.
struct Relay {
    relay: TestkitRelay,
    mode: Arc<AtomicU8>,
}

impl Relay {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode == SILENT {
            self.relay.stall();
        } else {
            self.relay.heal();
        }
    }

    fn url(&self, t: Timeouts) -> String {
        format!(
            "sqs://127.0.0.1:{}?region=us-east-1&connect_timeout_ms={}&operation_timeout_ms={}\
             &wait_time_ms={}",
            self.relay.port(),
            t.connect_ms,
            t.operation_ms,
            t.wait_ms
        )
    }
}

async fn relay(mode: u8) -> Relay {
    let mode = Arc::new(AtomicU8::new(mode));
    let relay = TestkitRelay::builder(&upstream().to_string())
        .hook(AnswerHook(mode.clone()))
        .start()
        .await
        .unwrap();
    let relay = Relay { relay, mode };
    relay.set(relay.mode.load(Ordering::SeqCst));
    relay
}

/// Breaks the answers (fauxqs to the client) off as the mode says; requests pass untouched.
struct AnswerHook(Arc<AtomicU8>);

impl Hook for AnswerHook {
    fn open(&self, _connection: usize, direction: Direction) -> Option<Box<dyn StreamHook>> {
        (direction == Direction::ToClient).then(|| {
            Box::new(Answers {
                mode: self.0.clone(),
                head_done: false,
            }) as Box<dyn StreamHook>
        })
    }
}

/// One connection's answers, and whether the current answer's head has gone through.
struct Answers {
    mode: Arc<AtomicU8>,
    head_done: bool,
}

impl StreamHook for Answers {
    fn step(&mut self, chunk: &[u8]) -> Step {
        let mode = self.mode.load(Ordering::SeqCst);
        let stop = |n| {
            if matches!(mode, CUT_HEAD | CUT_BODY) {
                Step::Cut(n)
            } else {
                Step::Stall(n)
            }
        };
        match mode {
            STALL_HEAD | CUT_HEAD => stop(chunk.len().min(12)),
            STALL_BODY | CUT_BODY if self.head_done => stop(1),
            STALL_BODY | CUT_BODY => match chunk.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) if end + 4 < chunk.len() => stop(end + 5),
                Some(_) => {
                    self.head_done = true;
                    Step::Forward(chunk.len())
                }
                None => Step::Forward(chunk.len()),
            },
            // FORWARD; SILENT is the relay's own stall.
            _ => Step::Forward(chunk.len()),
        }
    }
}

/// The step a test is at, for the message of its overall timeout.
#[derive(Clone, Default)]
struct Steps(Arc<Mutex<String>>);

impl Steps {
    /// Run `fut`, which must finish within `bound`; the failure names what was waited on.
    async fn within<T>(&self, what: &str, bound: Duration, fut: impl Future<Output = T>) -> T {
        *self.0.lock().unwrap() = what.to_owned();
        let started = Instant::now();
        let out = tokio::time::timeout(bound, fut)
            .await
            .unwrap_or_else(|_| panic!("still waiting on {what} after {bound:?}"));
        eprintln!("{what}: {:?}", started.elapsed());
        out
    }

    fn last(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Run a test body under `OVERALL`, naming the step it was stuck at if it runs out.
async fn bounded<F: Future<Output = ()>>(name: &str, body: impl FnOnce(Steps) -> F) {
    let steps = Steps::default();
    if tokio::time::timeout(OVERALL, body(steps.clone()))
        .await
        .is_err()
    {
        panic!(
            "{name} did not finish within {OVERALL:?}; it was waiting on {}",
            steps.last()
        );
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

fn fresh(what: &str) -> String {
    format!(
        "mr-silent-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// What a test works on: a backend through the relay, a queue whose messages come back 2 s
/// after a lost settle, its dead-letter queue, and a consumer holding each of the payloads.
struct Setup {
    backend: SqsBackend,
    queue: String,
    dlq: String,
    consumer: SqsConsumer,
    /// In the order of the payloads given.
    deliveries: Vec<Delivery>,
}

async fn setup(steps: &Steps, relay: &Relay, t: Timeouts, payloads: &[&str]) -> Setup {
    let bound = Duration::from_secs(20);
    let backend = steps
        .within("setup: connect", bound, SqsBackend::from_url(&relay.url(t)))
        .await
        .unwrap();
    let (queue, dlq) = (fresh("q"), fresh("dlq"));
    let topology = backend.topology();
    steps
        .within(
            "setup: declare the dead-letter queue",
            bound,
            topology.declare_queue(&QueueSpec::new(&dlq)),
        )
        .await
        .unwrap();
    let spec = QueueSpec::new(&queue)
        .dead_letter_queue(&dlq)
        .extra("VisibilityTimeout", "2");
    steps
        .within("setup: declare", bound, topology.declare_queue(&spec))
        .await
        .unwrap();
    let producer = backend.sqs_producer().unwrap();
    for p in payloads {
        let m = Message::new(p.to_string());
        steps
            .within(
                "setup: send",
                bound,
                producer.send(&Destination::queue(&queue), m),
            )
            .await
            .unwrap();
    }
    let options = ConsumerOptions::default().prefetch(payloads.len() as u32);
    let mut consumer = steps
        .within(
            "setup: open a consumer",
            bound,
            backend.sqs_consumer(&queue, options),
        )
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for _ in payloads {
        let d = steps
            .within("setup: receive", bound, consumer.receive())
            .await
            .unwrap();
        deliveries.push(d);
    }
    let at = |d: &Delivery| {
        payloads
            .iter()
            .position(|p| p.as_bytes() == d.message().payload())
    };
    deliveries.sort_by_key(at);
    Setup {
        backend,
        queue,
        dlq,
        consumer,
        deliveries,
    }
}

/// Straight to fauxqs: what is in `queue` now, each message acked.
async fn drain(steps: &Steps, queue: &str) -> Vec<String> {
    let b = SqsBackend::from_url(&sqs_url()).await.unwrap();
    let mut c = b.consumer(queue, ConsumerOptions::default()).await.unwrap();
    let mut seen = Vec::new();
    // The visibility timeout is 2 s: anything whose settle was lost is back well within 4 s.
    while let Some(d) = steps
        .within(
            "check: drain the queue",
            Duration::from_secs(20),
            c.receive_timeout(Duration::from_secs(4)),
        )
        .await
        .unwrap()
    {
        seen.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.unwrap();
    }
    c.close().await.unwrap();
    seen.sort();
    seen
}

/// Straight to fauxqs: delete what a test declared (some of it may be gone already).
async fn clean_up(queues: &[&str]) {
    let b = SqsBackend::from_url(&sqs_url()).await.unwrap();
    for q in queues {
        let _ = b.topology().delete_queue(q).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_ends_typed_within_its_timeout_when_the_endpoint_goes_silent() {
    bounded("silent endpoint", |steps| async move {
        let t = SHORT;
        let relay = relay(FORWARD).await;
        let s = setup(&steps, &relay, t, &["a", "b", "c", "d"]).await;
        let (b, queue, mut consumer) = (s.backend, s.queue, s.consumer);
        let [a, bb, c, d] = <[Delivery; 4]>::try_from(s.deliveries).ok().unwrap();
        let producer = b.producer().await.unwrap();

        relay.set(SILENT);

        let lost = Message::new("sent into the silence");
        let dest = Destination::queue(&queue);
        let err = steps
            .within("send", t.call() + SLACK, producer.send(&dest, lost.clone()))
            .await
            .unwrap_err();
        assert_typed("send", &err);
        assert_eq!(err.undelivered().map(Message::id), Some(lost.id()));
        let got = steps
            .within("receive", t.call() + SLACK, consumer.receive())
            .await;
        assert_typed("receive", got.as_ref().expect_err("receive fails"));
        // Both only queue their call for the settler's next batch.
        steps.within("ack", SLACK, a.ack()).await.unwrap();
        steps
            .within("nack", SLACK, bb.nack(Nack::requeue()))
            .await
            .unwrap();
        let err = steps
            .within(
                "dead-letter nack",
                t.call() + SLACK,
                c.nack(Nack::dead_letter("test")),
            )
            .await
            .unwrap_err();
        assert_typed("dead-letter nack", &err);
        // Waits for the settle calls queued so far, which run side by side; one batch may hold
        // a delete and a visibility change, one call after the other.
        steps
            .within("consumer close", t.call() * 2 + SLACK, consumer.close())
            .await
            .unwrap();
        // After close, an ack waits for its own call.
        let err = steps
            .within("ack after close", t.call() + SLACK, d.ack())
            .await
            .unwrap_err();
        assert_typed("ack after close", &err);
        let options = ConsumerOptions::default();
        let err = steps
            .within(
                "open a consumer",
                t.call() + SLACK,
                b.sqs_consumer(&queue, options),
            )
            .await
            .unwrap_err();
        assert_typed("open a consumer", &err);
        let other = QueueSpec::new(fresh("other"));
        let err = steps
            .within(
                "declare a queue",
                t.call() + SLACK,
                b.topology().declare_queue(&other),
            )
            .await
            .unwrap_err();
        assert_typed("declare a queue", &err);
        let err = steps
            .within(
                "delete a queue",
                t.call() + SLACK,
                b.topology().delete_queue(&queue),
            )
            .await
            .unwrap_err();
        assert_typed("delete a queue", &err);
        steps
            .within("producer close", SLACK, producer.close())
            .await
            .unwrap();
        steps
            .within("backend close", SLACK, b.close())
            .await
            .unwrap();
        let err = steps
            .within(
                "connect",
                t.call() + SLACK,
                SqsBackend::from_url(&relay.url(t)),
            )
            .await
            .unwrap_err();
        assert_typed("connect", &err);

        // The silence swallowed every settle, so all four come back (the dead-lettered one
        // too: its copy to the dead-letter queue was swallowed as well).
        assert_eq!(drain(&steps, &queue).await, ["a", "b", "c", "d"]);
        assert!(drain(&steps, &s.dlq).await.is_empty());
        clean_up(&[&queue, &s.dlq]).await;
    })
    .await;
}

/// Send, receive, settle, close and connect against answers broken off in `mode` (`name`).
async fn broken_answers(steps: Steps, mode: u8, name: &str, t: Timeouts) {
    let step = |what: &str| format!("{name}: {what}");
    let relay = relay(FORWARD).await;
    let s = setup(&steps, &relay, t, &["a", "b"]).await;
    let (b, queue, mut consumer) = (s.backend, s.queue, s.consumer);
    let [a, bb] = <[Delivery; 2]>::try_from(s.deliveries).ok().unwrap();
    let producer = b.producer().await.unwrap();

    relay.set(mode);

    let lost = Message::new("half answered");
    let dest = Destination::queue(&queue);
    let err = steps
        .within(
            &step("send"),
            t.call() + SLACK,
            producer.send(&dest, lost.clone()),
        )
        .await
        .unwrap_err();
    assert_typed(&step("send"), &err);
    assert_eq!(err.undelivered().map(Message::id), Some(lost.id()));
    let got = steps
        .within(&step("receive"), t.call() + SLACK, consumer.receive())
        .await;
    assert_typed(&step("receive"), got.as_ref().expect_err("receive fails"));
    steps.within(&step("ack"), SLACK, a.ack()).await.unwrap();
    steps
        .within(
            &step("consumer close"),
            t.call() * 2 + SLACK,
            consumer.close(),
        )
        .await
        .unwrap();
    let err = steps
        .within(&step("ack after close"), t.call() + SLACK, bb.ack())
        .await
        .unwrap_err();
    assert_typed(&step("ack after close"), &err);
    let err = steps
        .within(
            &step("connect"),
            t.call() + SLACK,
            SqsBackend::from_url(&relay.url(t)),
        )
        .await
        .unwrap_err();
    assert_typed(&step("connect"), &err);
    // What is left is not checked: every request reached fauxqs whole, so the ack and maybe
    // the send took effect there though their answers never arrived.
    clean_up(&[&queue, &s.dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_ends_typed_within_its_timeout_when_answers_stall() {
    bounded("answers stall", |steps| async move {
        broken_answers(steps.clone(), STALL_HEAD, "stalled in the head", SHORT).await;
        broken_answers(steps, STALL_BODY, "stalled in the body", SHORT).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_ends_typed_within_its_timeout_when_answers_are_cut() {
    bounded("answers cut", |steps| async move {
        broken_answers(steps.clone(), CUT_HEAD, "cut in the head", RETRIES_FIRST).await;
        broken_answers(steps, CUT_BODY, "cut in the body", RETRIES_FIRST).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalled_past_the_sdks_grace_period_is_a_timeout() {
    bounded("a body stalled past the grace period", |steps| async move {
        let t = PAST_GRACE;
        let relay = relay(FORWARD).await;
        let s = setup(&steps, &relay, t, &[]).await;
        let producer = s.backend.producer().await.unwrap();
        relay.set(STALL_BODY);
        let dest = Destination::queue(&s.queue);
        let err = steps
            .within(
                "send",
                t.call() + SLACK,
                producer.send(&dest, Message::new("x")),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.is_temporary(), "{err}");
        clean_up(&[&s.queue, &s.dlq]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_is_a_timeout_within_the_connect_timeouts() {
    bounded("a handshake that never completes", |steps| async move {
        // A listener that never accepts, its accept queue filled: Linux drops further SYNs, so
        // a connect to it is neither accepted nor refused.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut filled = Vec::new();
        while let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            filled.push(s);
            assert!(filled.len() < 64, "the accept queue never filled");
        }
        // The operation timeout is long: what ends the call is the connect timeout, on each of
        // the SDK's three attempts, with its backoff between them (at most 1 s, then 2 s).
        let t = RETRIES_FIRST;
        let url = format!(
            "sqs://{addr}?region=us-east-1&connect_timeout_ms={}&operation_timeout_ms={}",
            t.connect_ms, t.operation_ms
        );
        let bound = Duration::from_millis(3 * t.connect_ms + 3000) + SLACK;
        let err = steps
            .within("connect", bound, SqsBackend::from_url(&url))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.is_temporary(), "{err}");
        drop((listener, filled));
    })
    .await;
}
