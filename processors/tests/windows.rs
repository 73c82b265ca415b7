//! Windows through the test driver: tumbling, hopping, session; event time with watermarks,
//! allowed lateness and late data; processing time on the paused clock; flush on shutdown;
//! settle-after-result; the scale-out refusal; a rebalance that redelivers held inputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{
    Backend, Consumer, Delivery, DeliveryInfo, ErrorKind, Message, QueueSpec, Settle, Timestamp,
};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Pipeline, Source, TestDriver, WindowSpec, Windowed};

async fn driver() -> (MemoryBackend, TestDriver) {
    let broker = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(broker.clone());
    let driver = TestDriver::new(backend, &["in", "out", "late"])
        .await
        .unwrap();
    (broker, driver)
}

fn event(key: &str, at_ms: u64) -> Message {
    Message::builder(format!("{key}@{at_ms}"))
        .key(key)
        .timestamp(Timestamp::from_millis(at_ms))
        .build()
        .unwrap()
}

/// "key window-start window-end count [partial]" for each result.
fn render(w: Windowed<u64>) -> Message {
    Message::new(format!(
        "{} {}-{} {}{}",
        w.key.unwrap_or_default(),
        w.window.start.as_millis(),
        w.window.end.as_millis(),
        w.value,
        if w.partial { " partial" } else { "" }
    ))
}

#[tokio::test(start_paused = true)]
async fn tumbling_event_time_with_watermark_lateness_and_late_side_output() {
    let (broker, mut d) = driver().await;
    let windowed = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window(
            "per-minute",
            WindowSpec::tumbling(Duration::from_secs(60))
                .max_out_of_order(Duration::from_secs(5))
                .allowed_lateness(Duration::from_secs(10))
                .late_to(d.sink("late")),
        );
    let probe = windowed.probe();
    let pipeline = windowed
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for (k, t) in [("a", 1_000), ("b", 2_000), ("a", 59_000), ("a", 61_000)] {
        d.pipe("in", event(k, t)).await.unwrap();
    }
    d.run_until_idle().await;
    // Watermark 61 s - 5 s = 56 s: nothing has closed yet.
    assert!(d.read("out").await.unwrap().is_empty());
    assert_eq!(probe.watermark(), Some(Timestamp::from_millis(56_000)));
    assert_eq!(probe.open_windows().len(), 3);
    assert_eq!(
        broker.queue_depth("in").unwrap().unacked,
        4,
        "held until results confirm"
    );
    // Watermark 70 s: window [0, 60) ends at 60 s but allowed lateness keeps it to 70 s.
    d.pipe("in", event("b", 75_000)).await.unwrap();
    d.run_until_idle().await;
    let mut out = d.read_text("out").await.unwrap();
    out.sort();
    assert_eq!(out, ["a 0-60000 2", "b 0-60000 1"]);
    assert_eq!(
        broker.queue_depth("in").unwrap().unacked,
        2,
        "their 3 inputs acked"
    );
    // An event for the closed window is late: side output, acked, not counted.
    d.pipe("in", event("a", 30_000)).await.unwrap();
    // Within lateness of an open window: still counted.
    d.pipe("in", event("a", 62_000)).await.unwrap();
    d.run_until_idle().await;
    let late = d.read("late").await.unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].payload().as_ref(), b"a@30000");
    assert_eq!(
        late[0].headers().get("x-mailroom-late-window-end"),
        Some("60000")
    );
    // Shutdown flushes the open windows.
    let report = d.shutdown().await.unwrap();
    let mut out = d.read_text("out").await.unwrap();
    out.sort();
    assert_eq!(out, ["a 60000-120000 2", "b 60000-120000 1"]);
    assert_eq!(report.metrics.late, 1);
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready + depth.unacked, 0, "every input settled");
}

#[tokio::test(start_paused = true)]
async fn hopping_windows_count_each_event_in_every_window_it_falls_in() {
    let (broker, mut d) = driver().await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window(
            "hop",
            WindowSpec::hopping(Duration::from_secs(10), Duration::from_secs(5)),
        )
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for t in [1_000, 6_000, 7_000, 12_000] {
        d.pipe("in", event("k", t)).await.unwrap();
    }
    d.run_until_idle().await;
    d.shutdown().await.unwrap();
    let got: BTreeMap<String, String> = d
        .read_text("out")
        .await
        .unwrap()
        .into_iter()
        .map(|l| {
            let mut p = l.split(' ');
            let _ = p.next();
            (p.next().unwrap().to_owned(), p.next().unwrap().to_owned())
        })
        .collect();
    let expected: BTreeMap<String, String> =
        [("0-10000", "3"), ("5000-15000", "3"), ("10000-20000", "1")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
    assert_eq!(got, expected);
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready + depth.unacked, 0);
}

#[tokio::test(start_paused = true)]
async fn session_windows_merge_and_close_after_the_gap() {
    let (_broker, mut d) = driver().await;
    let windowed = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window(
            "sessions",
            WindowSpec::session(Duration::from_secs(10)).max_out_of_order(Duration::from_secs(15)),
        );
    let probe = windowed.probe();
    let pipeline = windowed
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    // Two sessions for "u": [1 s, 13 s) and [20 s, 30 s). An event at 12 s is within the gap of
    // both, so it bridges them into one session [1 s, 30 s).
    for t in [1_000, 3_000, 20_000] {
        d.pipe("in", event("u", t)).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(probe.open_windows().len(), 2);
    d.pipe("in", event("u", 12_000)).await.unwrap();
    d.run_until_idle().await;
    assert_eq!(
        probe.open_windows().len(),
        1,
        "the bridging event merged the sessions"
    );
    // Watermark 50 s - 15 s = 35 s closes it (it ends at 30 s).
    d.pipe("in", event("other", 50_000)).await.unwrap();
    d.run_until_idle().await;
    assert_eq!(d.read_text("out").await.unwrap(), ["u 1000-30000 4"]);
    d.shutdown().await.unwrap();
    assert_eq!(d.read_text("out").await.unwrap(), ["other 50000-60000 1"]);
}

#[tokio::test(start_paused = true)]
async fn processing_time_windows_fire_when_the_virtual_clock_passes_their_end() {
    let (broker, mut d) = driver().await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .map("strip-time", |m: Message| m)
        .window(
            "tumble",
            WindowSpec::tumbling(Duration::from_secs(10)).processing_time(),
        )
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for _ in 0..3 {
        d.pipe("in", Message::builder("x").key("k").build().unwrap())
            .await
            .unwrap();
    }
    d.run_until_idle().await;
    assert!(
        d.read("out").await.unwrap().is_empty(),
        "no time has passed"
    );
    d.advance(Duration::from_secs(10)).await;
    let out = d.read_text("out").await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].ends_with(" 3"), "{out:?}");
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready + depth.unacked, 0);
    d.shutdown().await.unwrap();
}

/// Event times come from messages, so they can be anything a producer wrote, up to the
/// largest timestamp. A window ending past it ends at the largest timestamp instead.
#[tokio::test(start_paused = true)]
async fn event_times_at_the_end_of_the_clock_do_not_break_any_window_kind() {
    // Each kind, with the result expected for the ordinary first event.
    let kinds = [
        (WindowSpec::tumbling(Duration::from_secs(60)), "k 0-60000 1"),
        (
            WindowSpec::hopping(Duration::from_secs(60), Duration::from_secs(20)),
            "k 0-60000 1",
        ),
        (
            WindowSpec::session(Duration::from_secs(60)),
            "k 5000-65000 1",
        ),
    ];
    for (kind, first) in kinds {
        let (broker, mut d) = driver().await;
        let pipeline = Pipeline::builder()
            .source(d.consumer("in").await.unwrap())
            .flow()
            .window("w", kind.clone().late_to(d.sink("late")))
            .count()
            .map("render", render)
            .to(d.sink("out"))
            .unwrap();
        d.start(pipeline);
        for t in [5_000, u64::MAX - 1, u64::MAX] {
            d.pipe("in", event("k", t)).await.unwrap();
        }
        d.run_until_idle().await;
        let report = d.shutdown().await.unwrap();
        assert!(report.error.is_none(), "{kind:?}: {report:?}");
        let out = d.read_text("out").await.unwrap();
        assert!(out.iter().any(|l| l == first), "{kind:?}: {out:?}");
        let depth = broker.queue_depth("in").unwrap();
        assert_eq!(
            depth.ready + depth.unacked,
            0,
            "{kind:?}: every input settled"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_window_fires_early_as_partial_and_totals_still_add_up() {
    let (broker, mut d) = driver().await;
    let pipeline = Pipeline::builder()
        .max_in_flight(8)
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window(
            "bounded",
            WindowSpec::tumbling(Duration::from_secs(60)).max_held(4),
        )
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for i in 0..10 {
        d.pipe("in", event("k", 1_000 + i)).await.unwrap();
    }
    d.run_until_idle().await;
    d.shutdown().await.unwrap();
    let out = d.read_text("out").await.unwrap();
    let total: u64 = out
        .iter()
        .map(|l| l.split(' ').nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 10);
    assert!(out.iter().any(|l| l.ends_with("partial")), "{out:?}");
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready + depth.unacked, 0);
}

#[tokio::test(start_paused = true)]
async fn keyed_windows_on_a_scaled_out_pipeline_need_a_key_partitioned_source() {
    let (_broker, d) = driver().await;
    let refused = Pipeline::builder()
        .scaled_out()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window("w", WindowSpec::tumbling(Duration::from_secs(1)))
        .count()
        .map("render", render)
        .to(d.sink("out"));
    let err = refused.err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("partitioned by key"), "{err}");
    let accepted = Pipeline::builder()
        .scaled_out()
        .source(Source::new(d.consumer("in").await.unwrap()).partitioned_by_key())
        .flow()
        .window("w", WindowSpec::tumbling(Duration::from_secs(1)))
        .count()
        .map("render", render)
        .to(d.sink("out"));
    assert!(accepted.is_ok());
}

/// What a partitioned broker (Kafka) knows: every delivery of partition 0 so far, the current
/// assignment, and the offsets settled under it.
#[derive(Default)]
struct Partition {
    log: Vec<Message>,
    assignment: u32,
    committed: BTreeSet<i64>,
    replay: VecDeque<i64>,
}

/// A source that behaves like a Kafka consumer on one partition, over a memory queue: its
/// deliveries carry partition 0 and offsets, and `rebalance` acts out an eager rebalance that
/// hands the partition straight back: delivery restarts at the first uncommitted offset under
/// a new assignment, and settles of the old assignment's deliveries are ignored.
struct Rebalancing {
    inner: Box<dyn Consumer>,
    partition: Arc<Mutex<Partition>>,
}

fn rebalance(partition: &Mutex<Partition>) {
    let mut p = partition.lock().unwrap();
    p.assignment += 1;
    let first_open = (0..p.log.len() as i64)
        .find(|o| !p.committed.contains(o))
        .unwrap_or(p.log.len() as i64);
    p.committed.retain(|o| *o < first_open);
    p.replay = (first_open..p.log.len() as i64).collect();
}

struct PartitionSettle {
    partition: Arc<Mutex<Partition>>,
    assignment: u32,
    offset: i64,
}

#[async_trait]
impl Settle for PartitionSettle {
    async fn ack(self: Box<Self>) -> mailroom_core::Result<()> {
        let mut p = self.partition.lock().unwrap();
        if p.assignment == self.assignment {
            p.committed.insert(self.offset);
        }
        Ok(())
    }
    async fn nack(self: Box<Self>, _: mailroom_core::Nack) -> mailroom_core::Result<()> {
        panic!("this test never nacks");
    }
    fn abandon(self: Box<Self>) {
        // Only a revoked delivery is dropped here; its partition restarts from the commit.
        assert_ne!(
            self.partition.lock().unwrap().assignment,
            self.assignment,
            "a delivery of the current assignment was dropped"
        );
    }
}

#[async_trait]
impl Consumer for Rebalancing {
    async fn receive(&mut self) -> mailroom_core::Result<Delivery> {
        let replayed = {
            let mut p = self.partition.lock().unwrap();
            p.replay
                .pop_front()
                .map(|o| (o, p.log[o as usize].clone(), p.assignment))
        };
        let (offset, message, assignment) = match replayed {
            Some(r) => r,
            None => {
                let d = self.inner.receive().await?;
                let message = d.message().clone();
                d.ack().await?;
                let mut p = self.partition.lock().unwrap();
                p.log.push(message.clone());
                (p.log.len() as i64 - 1, message, p.assignment)
            }
        };
        let info = DeliveryInfo {
            partition: Some(0),
            offset: Some(offset),
            ..DeliveryInfo::new("in")
        };
        let settle = PartitionSettle {
            partition: self.partition.clone(),
            assignment,
            offset,
        };
        Ok(Delivery::new(message, info, Box::new(settle)))
    }
    async fn close(&mut self) -> mailroom_core::Result<()> {
        self.inner.close().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_rebalance_that_redelivers_held_inputs_does_not_count_them_twice() {
    let (_broker, mut d) = driver().await;
    let partition = Arc::new(Mutex::new(Partition::default()));
    let source = Rebalancing {
        inner: d.consumer("in").await.unwrap(),
        partition: partition.clone(),
    };
    let pipeline = Pipeline::builder()
        .source(Box::new(source) as Box<dyn Consumer>)
        .flow()
        .window(
            "per-minute",
            WindowSpec::tumbling(Duration::from_secs(60))
                .max_out_of_order(Duration::from_secs(3600)),
        )
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for (k, t) in [
        ("a", 1_000),
        ("b", 2_000),
        ("a", 3_000),
        ("a", 4_000),
        ("b", 5_000),
    ] {
        d.pipe("in", event(k, t)).await.unwrap();
    }
    d.run_until_idle().await;
    assert!(
        d.read("out").await.unwrap().is_empty(),
        "windows still open"
    );
    // The partition comes back from its last commit (none yet): all five again, then a new one.
    rebalance(&partition);
    d.pipe("in", event("c", 6_000)).await.unwrap();
    d.run_until_idle().await;
    assert_eq!(
        d.snapshot().received,
        11,
        "the five held inputs were delivered again"
    );
    let report = d.shutdown().await.unwrap();
    let mut out = d.read_text("out").await.unwrap();
    out.sort();
    assert_eq!(out, ["a 0-60000 3", "b 0-60000 2", "c 0-60000 1"]);
    // Every offset is committed under the new assignment: nothing is lost either.
    let p = partition.lock().unwrap();
    assert_eq!(p.committed, (0..6).collect::<BTreeSet<i64>>());
    assert_eq!(
        report.metrics.abandoned, 5,
        "the revoked deliveries were let go"
    );
}

#[tokio::test(start_paused = true)]
async fn repartition_by_key_makes_keyed_windows_valid_when_scaled_out() {
    let (broker, mut d) = driver().await;
    d.declare(QueueSpec::new("keyed")).await.unwrap();
    // The source is not partitioned by key, so windows right after it are refused (see the
    // test above); through a keyed topic they are accepted.
    let pipeline = Pipeline::builder()
        .scaled_out()
        .source(d.consumer("in").await.unwrap())
        .flow()
        // The key is in the payload ("user@time"): the messages themselves carry none.
        .key_by("user", |m: &Message| {
            let text = String::from_utf8_lossy(m.payload()).into_owned();
            text.split('@').next().unwrap_or_default().to_owned()
        })
        .repartition_by_key(d.sink("keyed"), d.consumer("keyed").await.unwrap())
        .window(
            "per-minute",
            WindowSpec::tumbling(Duration::from_secs(60))
                .max_out_of_order(Duration::from_secs(3600)),
        )
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .expect("repartitioned by key: keyed windows are valid scaled out");
    d.start(pipeline);
    for (user, t) in [
        ("ann", 1_000),
        ("bob", 2_000),
        ("ann", 3_000),
        ("ann", 61_000),
    ] {
        let message = Message::builder(format!("{user}@{t}"))
            .timestamp(Timestamp::from_millis(t))
            .build()
            .unwrap();
        d.pipe("in", message).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(
        broker.queue_depth("in").unwrap().unacked,
        0,
        "the first half settles its inputs once they are in the keyed topic"
    );
    let report = d.shutdown().await.unwrap();
    assert!(report.error.is_none(), "{report:?}");
    let mut out = d.read_text("out").await.unwrap();
    out.sort();
    assert_eq!(
        out,
        ["ann 0-60000 2", "ann 60000-120000 1", "bob 0-60000 1"]
    );
    for queue in ["in", "keyed"] {
        let depth = broker.queue_depth(queue).unwrap();
        assert_eq!(
            depth.ready + depth.unacked,
            0,
            "every input of {queue} settled"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn repartition_by_key_refuses_an_item_without_a_key() {
    let (broker, mut d) = driver().await;
    d.declare(QueueSpec::new("keyed")).await.unwrap();
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .repartition_by_key(d.sink("keyed"), d.consumer("keyed").await.unwrap())
        .map("pass", |m: Message| m)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    d.pipe("in", Message::new("no key")).await.unwrap();
    let report = d.join().await.unwrap();
    let error = report.error.expect("the pipeline fails");
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    assert!(format!("{error:#}").contains("no key"), "{error:#}");
    assert_eq!(
        broker.queue_depth("keyed").unwrap().ready,
        0,
        "nothing sent"
    );
    assert_eq!(
        broker.queue_depth("in").unwrap().ready,
        1,
        "the input is redelivered"
    );
}
