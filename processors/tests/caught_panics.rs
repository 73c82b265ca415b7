//! A panic in any user function is caught and handled by its stage's error policy (or, where
//! no single input can be blamed, stops the pipeline with every unsettled input redelivered):
//! an event-time extractor, a window's init and fold, a session window's merge.

use std::sync::atomic::{AtomicBool, Ordering as A};
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::{Backend, Message, Timestamp};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{stage, ErrorPolicy, Pipeline, TestDriver, WindowSpec, Windowed};

async fn driver() -> (MemoryBackend, TestDriver) {
    let broker = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(broker.clone());
    let driver = TestDriver::new(backend, &["in", "out", "dlq"])
        .await
        .unwrap();
    (broker, driver)
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.payload()).into_owned()
}

/// A message whose payload is `payload`, stamped at `at_ms`.
fn at(payload: &str, at_ms: u64) -> Message {
    Message::builder(payload.to_owned())
        .timestamp(Timestamp::from_millis(at_ms))
        .build()
        .unwrap()
}

/// "window-start-window-end value" for each result.
fn render(w: Windowed<u64>) -> Message {
    Message::new(format!(
        "{}-{} {}",
        w.window.start.as_millis(),
        w.window.end.as_millis(),
        w.value
    ))
}

fn settled(broker: &MemoryBackend) -> bool {
    let d = broker.queue_depth("in").unwrap();
    d.ready == 0 && d.unacked == 0 && d.delayed == 0
}

/// The payloads in "dlq", and whether each names `panic` as its reason.
async fn dead_letters(d: &TestDriver, panic: &str) -> Vec<String> {
    let dead = d.read("dlq").await.unwrap();
    for m in &dead {
        let reason = m.headers().get("x-mailroom-dead-letter-reason").unwrap();
        assert!(reason.contains(panic), "reason {reason:?}");
    }
    dead.iter().map(text).collect()
}

#[tokio::test(start_paused = true)]
async fn a_panicking_event_time_extractor_dead_letters_its_input() {
    let (broker, mut d) = driver().await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .event_time(
            stage("ts").on_error(ErrorPolicy::dead_letter(d.sink("dlq"))),
            |m: &Message| match text(m).parse::<u64>() {
                Ok(ms) => Timestamp::from_millis(ms),
                Err(_) => panic!("no timestamp in {:?}", text(m)),
            },
        )
        .window("w", WindowSpec::tumbling(Duration::from_secs(60)))
        .count()
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for t in ["1000", "boom", "2000"] {
        d.pipe("in", Message::new(t)).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(dead_letters(&d, "no timestamp").await, ["boom"]);
    let report = d.shutdown().await.unwrap();
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(d.read_text("out").await.unwrap(), ["0-60000 2"]);
    assert_eq!(report.metrics.dead_lettered, 1);
    assert!(settled(&broker));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_fold_dead_letters_its_input_and_the_window_keeps_the_rest() {
    let (broker, mut d) = driver().await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window(
            stage("sum").on_error(ErrorPolicy::dead_letter(d.sink("dlq"))),
            WindowSpec::tumbling(Duration::from_secs(60)),
        )
        .aggregate(
            || 0u64,
            |sum, m: Message| match text(&m).parse::<u64>() {
                Ok(n) => *sum += n,
                Err(_) => panic!("not a number: {:?}", text(&m)),
            },
            |a, b| *a += b,
        )
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for (payload, t) in [
        ("1", 1_000),
        ("boom", 2_000),
        ("10", 3_000),
        ("100", 61_000),
    ] {
        d.pipe("in", at(payload, t)).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(dead_letters(&d, "not a number").await, ["boom"]);
    let report = d.shutdown().await.unwrap();
    assert!(report.error.is_none(), "{report:?}");
    let mut out = d.read_text("out").await.unwrap();
    out.sort();
    assert_eq!(out, ["0-60000 11", "60000-120000 100"]);
    assert!(
        settled(&broker),
        "the fold's other inputs acked with their window"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_init_dead_letters_the_input_that_opened_the_window() {
    let (broker, mut d) = driver().await;
    let first = Arc::new(AtomicBool::new(true));
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window(
            stage("count").on_error(ErrorPolicy::dead_letter(d.sink("dlq"))),
            WindowSpec::session(Duration::from_secs(10)),
        )
        .aggregate(
            move || {
                if first.swap(false, A::SeqCst) {
                    panic!("cold start");
                }
                0u64
            },
            |n, _m: Message| *n += 1,
            |a, b| *a += b,
        )
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    for (payload, t) in [("a", 1_000), ("b", 2_000), ("c", 3_000)] {
        d.pipe("in", at(payload, t)).await.unwrap();
    }
    d.run_until_idle().await;
    assert_eq!(dead_letters(&d, "cold start").await, ["a"]);
    let report = d.shutdown().await.unwrap();
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(d.read_text("out").await.unwrap(), ["2000-13000 2"]);
    assert!(settled(&broker));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_session_merge_stops_the_pipeline_and_acks_nothing_it_held() {
    let (broker, mut d) = driver().await;
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .window(
            stage("sessions").on_error(ErrorPolicy::dead_letter(d.sink("dlq"))),
            // Out of order by up to 30 s: the first session is still open when they merge.
            WindowSpec::session(Duration::from_secs(10)).max_out_of_order(Duration::from_secs(30)),
        )
        .aggregate(
            || 0u64,
            |n, _m: Message| *n += 1,
            |_, _| panic!("cannot merge"),
        )
        .map("render", render)
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    // Two sessions, then an item within the gap of both: they merge.
    for (payload, t) in [("a", 0), ("b", 15_000), ("c", 8_000)] {
        d.pipe("in", at(payload, t)).await.unwrap();
    }
    d.run_until_idle().await;
    // Paused clock: the timeout passes (virtually) only if the pipeline hangs instead.
    let report = tokio::time::timeout(Duration::from_secs(600), d.join())
        .await
        .expect("the pipeline stops by itself")
        .unwrap();
    let error = report.error.expect("the pipeline stops");
    let mut chain = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(c) = cause {
        chain.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(
        chain.contains("sessions") && chain.contains("cannot merge"),
        "{chain}"
    );
    assert!(d.read("out").await.unwrap().is_empty());
    assert!(d.read("dlq").await.unwrap().is_empty());
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(
        depth.ready + depth.unacked,
        3,
        "every input left for redelivery"
    );
}
