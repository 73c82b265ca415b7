//! Stages, ordering modes, error policies, fan-out, batching and shutdown, through the test
//! driver on the in-memory broker with tokio's paused clock: no sleeps, no timing assertions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as A};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_core::{Backend, Error, ErrorKind, Message};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{
    stage, Backoff, Batch, ErrorPolicy, Ordering, Pipeline, Source, TestDriver,
    DEAD_LETTER_STAGE_HEADER,
};
use serde::{Deserialize, Serialize};

async fn driver(queues: &[&str]) -> (MemoryBackend, TestDriver) {
    let broker = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(broker.clone());
    let driver = TestDriver::new(backend, queues).await.unwrap();
    (broker, driver)
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.payload()).into_owned()
}

fn settled(broker: &MemoryBackend, queue: &str) -> bool {
    let d = broker.queue_depth(queue).unwrap();
    d.ready == 0 && d.unacked == 0 && d.delayed == 0
}

#[tokio::test(start_paused = true)]
async fn sync_stages_transform_filter_and_ack_everything() {
    let (broker, mut d) = driver(&["in", "out"]).await;
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .map("text", |m: Message| text(&m))
        .filter("no-skip", |t: &String| !t.starts_with("skip"))
        .filter_map("not-empty", |t: String| (!t.is_empty()).then_some(t))
        .flat_map("words", |t: String| {
            t.split(' ').map(str::to_owned).collect::<Vec<_>>()
        })
        .inspect("count", move |_| {
            counter.fetch_add(1, A::Relaxed);
        })
        .map("upper", |w: String| Message::new(w.to_uppercase()))
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for t in ["a b", "skip me", "", "c", "d e f"] {
        d.pipe("in", Message::new(t)).await.unwrap();
    }
    d.run_until_idle().await;
    let out = d.read_text("out").await.unwrap();
    assert_eq!(out, ["A", "B", "C", "D", "E", "F"]);
    assert_eq!(seen.load(A::Relaxed), 6);
    assert!(
        settled(&broker, "in"),
        "every input acked, filtered ones too"
    );
    let report = d.shutdown().await.unwrap();
    let m = report.metrics;
    assert_eq!((m.received, m.out, m.filtered, m.acked), (5, 6, 2, 5));
    assert_eq!(m.stage("words").unwrap().output, 6);
    assert_eq!(m.in_flight, 0);
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Order {
    id: u32,
    cents: u64,
}

#[tokio::test(start_paused = true)]
async fn decode_encode_and_dead_letter_bad_payloads_with_headers() {
    let (broker, mut d) = driver(&["in", "out", "dlq"]).await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .decode::<Order>(stage("decode").on_error(ErrorPolicy::dead_letter(d.sink("dlq"))))
        .map("double", |o: Order| Order {
            cents: o.cents * 2,
            ..o
        })
        .encode("encode")
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    d.pipe(
        "in",
        mailroom_core::json::encode(&Order { id: 1, cents: 5 }).unwrap(),
    )
    .await
    .unwrap();
    d.pipe("in", Message::new("{not json")).await.unwrap();
    d.run_until_idle().await;
    let out = d.read("out").await.unwrap();
    assert_eq!(out.len(), 1);
    let order: Order = mailroom_core::json::decode(&out[0]).unwrap();
    assert_eq!(order, Order { id: 1, cents: 10 });
    let dead = d.read("dlq").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        text(&dead[0]),
        "{not json",
        "the original input is dead-lettered"
    );
    let h = dead[0].headers();
    assert_eq!(h.get(DEAD_LETTER_STAGE_HEADER), Some("decode"));
    assert_eq!(h.get("x-mailroom-dead-letter-error-kind"), Some("decode"));
    assert_eq!(h.get("x-mailroom-dead-letter-source"), Some("in"));
    assert_eq!(h.get("x-mailroom-dead-letter-attempts"), Some("1"));
    assert!(h
        .get("x-mailroom-dead-letter-reason")
        .unwrap()
        .contains("Order"));
    assert!(settled(&broker, "in"));
    let m = d.shutdown().await.unwrap().metrics;
    assert_eq!(m.dead_lettered, 1);
    assert_eq!(m.stage("decode").unwrap().errors, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_with_backoff_then_succeed_then_dead_letter_after_exhaustion() {
    let (broker, mut d) = driver(&["in", "out", "dlq"]).await;
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let calls2 = calls.clone();
    let policy = ErrorPolicy::retry_then(
        Backoff::exponential(Duration::from_secs(1), 3).jitter(0.0),
        ErrorPolicy::dead_letter(d.sink("dlq")),
    );
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .then(
            stage("flaky").on_error(policy).concurrency(2),
            move |m: Message| {
                let t = text(&m);
                let n = {
                    let mut c = calls2.lock().unwrap();
                    let n = c.entry(t.clone()).or_default();
                    *n += 1;
                    *n
                };
                async move {
                    // "sometimes" fails twice then works; "never" always fails.
                    if t == "never" || n <= 2 {
                        Err(Error::new(ErrorKind::Timeout, format!("{t} attempt {n}")))
                    } else {
                        Ok(m)
                    }
                }
            },
        )
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    d.pipe("in", Message::new("sometimes")).await.unwrap();
    d.pipe("in", Message::new("never")).await.unwrap();
    d.run_until_idle().await;
    assert!(
        d.read("out").await.unwrap().is_empty(),
        "backing off: nothing yet"
    );
    d.advance(Duration::from_secs(1)).await; // attempt 2 after 1 s
    d.advance(Duration::from_secs(2)).await; // attempt 3 after 2 s more
    assert_eq!(d.read_text("out").await.unwrap(), ["sometimes"]);
    let dead = d.read("dlq").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(text(&dead[0]), "never");
    assert_eq!(
        dead[0].headers().get("x-mailroom-dead-letter-attempts"),
        Some("3")
    );
    assert_eq!(calls.lock().unwrap()["never"], 3);
    assert!(settled(&broker, "in"));
    let m = d.shutdown().await.unwrap().metrics;
    assert_eq!(m.retried, 4);
}

#[tokio::test(start_paused = true)]
async fn skip_requeue_and_caught_panics() {
    let (broker, mut d) = driver(&["in", "out", "dlq"]).await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .try_map(
            stage("skip-bad").on_error(ErrorPolicy::Skip),
            |m: Message| {
                if text(&m) == "bad" {
                    Err(Error::invalid_input("bad"))
                } else {
                    Ok(m)
                }
            },
        )
        .map(
            stage("panicky").on_error(ErrorPolicy::dead_letter(d.sink("dlq"))),
            |m: Message| {
                if text(&m) == "boom" {
                    panic!("user code exploded");
                }
                m
            },
        )
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for t in ["ok", "bad", "boom", "ok2"] {
        d.pipe("in", Message::new(t)).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(d.read_text("out").await.unwrap(), ["ok", "ok2"]);
    let dead = d.read("dlq").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0]
        .headers()
        .get("x-mailroom-dead-letter-reason")
        .unwrap()
        .contains("user code exploded"));
    assert!(settled(&broker, "in"));
    let m = d.shutdown().await.unwrap().metrics;
    assert_eq!((m.skipped, m.dead_lettered), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn requeue_policy_hands_the_input_back_to_the_broker() {
    let (broker, mut d) = driver(&["in", "out"]).await;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .then(
            stage("first-fails").on_error(ErrorPolicy::Requeue { delay: None }),
            move |m: Message| {
                let first = c.fetch_add(1, A::Relaxed) == 0;
                async move {
                    if first {
                        Err(Error::new(ErrorKind::Timeout, "first attempt"))
                    } else {
                        Ok(m)
                    }
                }
            },
        )
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    d.pipe("in", Message::new("y")).await.unwrap();
    d.run_until_idle().await;
    assert_eq!(d.read_text("out").await.unwrap(), ["y"]);
    assert_eq!(calls.load(A::Relaxed), 2, "redelivered once by the broker");
    let m = d.shutdown().await.unwrap().metrics;
    assert_eq!((m.requeued, m.acked, m.received), (1, 1, 2));
    assert!(settled(&broker, "in"));
}

#[tokio::test(start_paused = true)]
async fn fail_policy_stops_the_pipeline_and_loses_nothing() {
    let (broker, mut d) = driver(&["in", "out"]).await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .try_map("strict", |m: Message| {
            if text(&m) == "poison" {
                Err(Error::invalid_input("poison"))
            } else {
                Ok(m)
            }
        })
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for t in ["a", "poison", "b"] {
        d.pipe("in", Message::new(t)).await.unwrap();
    }
    d.run_until_idle().await;
    let report = d.join().await.unwrap();
    let error = report.error.expect("the pipeline failed");
    assert!(error.to_string().contains("strict"), "{error}");
    assert_eq!(d.read_text("out").await.unwrap(), ["a"]);
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(
        depth.ready + depth.unacked,
        2,
        "poison and b are back in the queue"
    );
}

/// Async stage that records, per key, the order items finish in and how many run at once.
#[derive(Default)]
struct Observed {
    per_key: Mutex<HashMap<String, Vec<u32>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    running_keys: Mutex<HashMap<String, u32>>,
    same_key_overlap: AtomicUsize,
}

async fn observe(obs: Arc<Observed>, m: Message) -> Result<Message, Error> {
    let key = m.key().unwrap_or("").to_owned();
    let seq: u32 = text(&m).parse().unwrap();
    {
        let mut rk = obs.running_keys.lock().unwrap();
        let n = rk.entry(key.clone()).or_default();
        if *n > 0 {
            obs.same_key_overlap.fetch_add(1, A::Relaxed);
        }
        *n += 1;
    }
    let now = obs.running.fetch_add(1, A::Relaxed) + 1;
    obs.max_running.fetch_max(now, A::Relaxed);
    // Uneven work without time: later items often finish before earlier ones.
    for _ in 0..(seq * 7919 % 13) {
        tokio::task::yield_now().await;
    }
    obs.running.fetch_sub(1, A::Relaxed);
    *obs.running_keys.lock().unwrap().get_mut(&key).unwrap() -= 1;
    obs.per_key
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .push(seq);
    Ok(m)
}

async fn run_ordering(ordering: Ordering, two_sources: bool, keys: u32) -> Arc<Observed> {
    let (broker, mut d) = driver(&["in", "in2", "out"]).await;
    let obs = Arc::new(Observed::default());
    let o = obs.clone();
    let mut builder = Pipeline::builder()
        .ordering(ordering)
        .max_in_flight(64)
        .source(d.consumer("in").await.unwrap());
    if two_sources {
        builder = builder.source(Source::new(d.consumer("in2").await.unwrap()));
    }
    let pipeline = builder
        .flow()
        .then(stage("work").concurrency(8), move |m| observe(o.clone(), m))
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for i in 0..640u32 {
        let key = format!("k{}", i % keys);
        let queue = if two_sources && i % 2 == 1 {
            "in2"
        } else {
            "in"
        };
        let m = Message::builder(i.to_string()).key(key).build().unwrap();
        d.pipe(queue, m).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(d.read("out").await.unwrap().len(), 640);
    assert!(settled(&broker, "in") && settled(&broker, "in2"));
    d.shutdown().await.unwrap();
    obs
}

#[tokio::test(start_paused = true)]
async fn per_key_ordering_keeps_each_key_in_order_across_16_keys_in_parallel() {
    let obs = run_ordering(Ordering::PerKey, false, 16).await;
    let per_key = obs.per_key.lock().unwrap();
    assert_eq!(per_key.len(), 16);
    for (key, seqs) in per_key.iter() {
        assert_eq!(seqs.len(), 40);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {seqs:?}"
        );
    }
    assert_eq!(
        obs.same_key_overlap.load(A::Relaxed),
        0,
        "one item per key at a time"
    );
    assert!(
        obs.max_running.load(A::Relaxed) > 1,
        "different keys ran in parallel"
    );
    assert!(
        obs.max_running.load(A::Relaxed) <= 8,
        "concurrency limit held"
    );
}

#[tokio::test(start_paused = true)]
async fn unordered_runs_in_parallel_and_may_reorder() {
    let obs = run_ordering(Ordering::Unordered, false, 2).await;
    assert!(obs.max_running.load(A::Relaxed) > 1);
    assert!(obs.max_running.load(A::Relaxed) <= 8);
    let per_key = obs.per_key.lock().unwrap();
    let total: usize = per_key.values().map(Vec::len).sum();
    assert_eq!(total, 640);
    assert!(
        obs.same_key_overlap.load(A::Relaxed) > 0,
        "same key ran concurrently"
    );
}

#[tokio::test(start_paused = true)]
async fn per_partition_keeps_each_source_in_order() {
    let obs = run_ordering(Ordering::PerPartition, true, 16).await;
    // Items from "in" are even, from "in2" odd; each source's items finish in order.
    let mut all: Vec<u32> = Vec::new();
    for seqs in obs.per_key.lock().unwrap().values() {
        all.extend(seqs);
    }
    assert_eq!(all.len(), 640);
    assert!(
        obs.max_running.load(A::Relaxed) >= 2,
        "the two partitions ran in parallel"
    );
    assert!(
        obs.max_running.load(A::Relaxed) <= 2,
        "one item per partition at a time"
    );
}

#[tokio::test(start_paused = true)]
async fn fan_out_and_routing() {
    let (broker, mut d) = driver(&["in", "a", "b", "evens", "odds"]).await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .fan_out("both", vec![d.sink("a"), d.sink("b")])
        .unwrap();
    d.start(pipeline);
    for i in 0..10 {
        d.pipe("in", Message::new(i.to_string())).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(d.read("a").await.unwrap().len(), 10);
    assert_eq!(d.read("b").await.unwrap().len(), 10);
    assert!(settled(&broker, "in"));
    let m = d.shutdown().await.unwrap().metrics;
    assert_eq!((m.received, m.out, m.acked), (10, 20, 10));

    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .route("parity", vec![d.sink("evens"), d.sink("odds")], |m| {
            let n: u32 = text(m).parse().ok()?;
            (n < 8).then_some((n % 2) as usize)
        })
        .unwrap();
    d.start(pipeline);
    for i in 0..10 {
        d.pipe("in", Message::new(i.to_string())).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(d.read_text("evens").await.unwrap(), ["0", "2", "4", "6"]);
    assert_eq!(d.read_text("odds").await.unwrap(), ["1", "3", "5", "7"]);
    assert!(
        settled(&broker, "in"),
        "unrouted 8 and 9 were acked as filtered"
    );
    d.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batches_close_by_count_bytes_and_time_and_flush_on_shutdown() {
    let (broker, mut d) = driver(&["in", "out"]).await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .map("text", |m: Message| text(&m))
        .batch(
            "batch",
            Batch::count(3).bytes(10).wait(Duration::from_secs(5)),
        )
        .map("join", |b: Vec<String>| Message::new(b.join(",")))
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for t in ["a", "b", "c", "d"] {
        d.pipe("in", Message::new(t)).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(d.read_text("out").await.unwrap(), ["a,b,c"], "by count");
    assert_eq!(
        broker.queue_depth("in").unwrap().unacked,
        1,
        "d waits, unacked"
    );
    d.advance(Duration::from_secs(5)).await;
    assert_eq!(d.read_text("out").await.unwrap(), ["d"], "by time");
    d.pipe("in", Message::new("0123456789ab")).await.unwrap();
    d.run_until_idle().await;
    assert_eq!(
        d.read_text("out").await.unwrap(),
        ["0123456789ab"],
        "by bytes"
    );
    d.pipe("in", Message::new("tail")).await.unwrap();
    d.run_until_idle().await;
    let report = d.shutdown().await.unwrap();
    assert!(!report.timed_out);
    assert_eq!(
        d.read_text("out").await.unwrap(),
        ["tail"],
        "flushed on shutdown"
    );
    assert!(settled(&broker, "in"));
}

#[tokio::test(start_paused = true)]
async fn batched_sink_sends_whole_batches() {
    let (broker, mut d) = driver(&["in", "out"]).await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .batch("batch", Batch::count(4))
        .to_batched(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for i in 0..8 {
        d.pipe("in", Message::new(i.to_string())).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(d.read("out").await.unwrap().len(), 8);
    assert!(settled(&broker, "in"));
    d.shutdown().await.unwrap();
}

/// A batch that could only fill with more inputs than the pipeline may hold would wait for
/// inputs that cannot come: once every slot is held, the batch goes out as it is.
#[tokio::test(start_paused = true)]
async fn a_batch_larger_than_max_in_flight_goes_out_when_every_slot_is_held() {
    let (broker, mut d) = driver(&["in", "out"]).await;
    let pipeline = Pipeline::builder()
        .max_in_flight(8)
        .source(d.consumer("in").await.unwrap())
        .flow()
        .batch("batch", Batch::count(100).bytes(1 << 20))
        .to_batched(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for i in 0..20 {
        d.pipe("in", Message::new(i.to_string())).await.unwrap();
    }
    d.run_until_idle().await;
    let sent = |range: std::ops::Range<u32>| range.map(|i| i.to_string()).collect::<Vec<_>>();
    // Twice every slot was held; the last 4 leave 4 free, so their batch waits for more.
    assert_eq!(d.read_text("out").await.unwrap(), sent(0..16));
    assert_eq!(broker.queue_depth("in").unwrap().unacked, 4);
    d.shutdown().await.unwrap();
    assert_eq!(d.read_text("out").await.unwrap(), sent(16..20), "flushed");
    assert!(settled(&broker, "in"));
}

#[tokio::test(start_paused = true)]
async fn drain_timeout_reports_unfinished_inputs_and_releases_them() {
    let (broker, mut d) = driver(&["in", "out"]).await;
    let pipeline = Pipeline::builder()
        .drain_timeout(Duration::from_secs(2))
        .source(d.consumer("in").await.unwrap())
        .flow()
        .then(stage("stuck").concurrency(4), |m: Message| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(m)
        })
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for i in 0..3 {
        d.pipe("in", Message::new(i.to_string())).await.unwrap();
    }
    d.run_until_idle().await;
    // Shutdown waits for the drain; the paused clock runs ahead to the drain timeout.
    let report = d.shutdown().await.unwrap();
    assert!(report.timed_out);
    assert_eq!(report.unfinished, 3);
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready, 3, "released inputs are back in the queue");
}

/// A consumer whose every ack is refused at once (`Settle::try_ack` answers an error without
/// waiting), as a broker that lost the delivery's channel would. The memory broker underneath
/// is acked all the same: were the input redelivered, the pipeline would go round forever.
struct RefusesAcks(Box<dyn mailroom_core::Consumer>);

struct RefusedAck(Option<mailroom_core::Delivery>);

#[async_trait::async_trait]
impl mailroom_core::Settle for RefusedAck {
    async fn ack(self: Box<Self>) -> mailroom_core::Result<()> {
        Err(Error::new(ErrorKind::Broker, "ack refused"))
    }
    async fn nack(self: Box<Self>, _: mailroom_core::Nack) -> mailroom_core::Result<()> {
        Err(Error::new(ErrorKind::Broker, "nack refused"))
    }
    fn abandon(self: Box<Self>) {}
    fn try_ack(&mut self) -> Option<mailroom_core::Result<()>> {
        if let Some(inner) = self.0.take() {
            assert!(matches!(
                inner.try_ack(),
                mailroom_core::TryAck::Done(Ok(()))
            ));
        }
        Some(Err(Error::new(ErrorKind::Broker, "ack refused")))
    }
}

impl RefusesAcks {
    fn wrap(d: mailroom_core::Delivery) -> mailroom_core::Delivery {
        let (message, info) = (d.message().clone(), d.info().clone());
        mailroom_core::Delivery::new(message, info, Box::new(RefusedAck(Some(d))))
    }
}

#[async_trait::async_trait]
impl mailroom_core::Consumer for RefusesAcks {
    async fn receive(&mut self) -> mailroom_core::Result<mailroom_core::Delivery> {
        self.0.receive().await.map(Self::wrap)
    }
    fn try_receive(&mut self) -> Option<mailroom_core::Result<mailroom_core::Delivery>> {
        self.0.try_receive().map(|r| r.map(Self::wrap))
    }
    async fn close(&mut self) -> mailroom_core::Result<()> {
        self.0.close().await
    }
}

#[tokio::test(start_paused = true)]
async fn an_ack_refused_at_once_counts_a_settle_error_and_frees_the_inputs_slot() {
    const N: usize = 20;
    let (_broker, mut d) = driver(&["in", "out"]).await;
    let source: Box<dyn mailroom_core::Consumer> =
        Box::new(RefusesAcks(d.consumer("in").await.unwrap()));
    // Fewer slots than inputs: a refused ack that kept its slot would stall the source.
    let pipeline = Pipeline::builder()
        .max_in_flight(4)
        .source(source)
        .flow()
        .map("same", |m: Message| m)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for i in 0..N {
        d.pipe("in", Message::new(i.to_string())).await.unwrap();
    }
    d.run_until_idle().await;
    let report = d.shutdown().await.unwrap();
    assert_eq!(report.metrics.out, N as u64, "{report:?}");
    assert_eq!(report.metrics.settle_errors, N as u64, "{report:?}");
    assert_eq!(report.metrics.acked, 0, "{report:?}");
    assert_eq!(
        report.metrics.in_flight, 0,
        "every slot given back: {report:?}"
    );
}
