//! Backpressure with bounded memory, and crash-restart without loss (stateless and windowed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::layer::{ChaosLayer, Fault, LayerStack, Operation, When};
use mailroom_core::{Backend, Consumer, Destination, Message, Producer, Timestamp};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{stage, Pipeline, Sink, TestDriver, WindowSpec};

#[tokio::test(start_paused = true)]
async fn a_sink_ten_times_slower_than_the_source_keeps_in_flight_within_the_bound() {
    const N: usize = 100_000;
    const BOUND: usize = 64;
    let broker = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(broker.clone());
    // Declares the queues.
    TestDriver::new(backend.clone(), &["in", "out"])
        .await
        .unwrap();
    let producer = broker.memory_producer();
    for i in 0..N {
        producer
            .send(&Destination::queue("in"), Message::new(i.to_string()))
            .await
            .unwrap();
    }
    // A source that takes 1 ms per receive, and a sink that accepts at once but confirms one
    // message per 10 ms, like a slow broker with asynchronous confirms.
    let chaos = ChaosLayer::new(0)
        .inject(
            Operation::Receive,
            When::Always,
            Fault::Delay(Duration::from_millis(1)),
        )
        .inject(
            Operation::Confirm,
            When::Always,
            Fault::Throttle(Duration::from_millis(10)),
        );
    let slow = LayerStack::new()
        .layer(chaos.clone())
        .apply(backend.clone());
    let source = slow.consumer("in", Default::default()).await.unwrap();
    let sink = slow.producer().await.unwrap();
    let pipeline = Pipeline::builder()
        .max_in_flight(BOUND)
        .source(source)
        .flow()
        .map("tag", |m: Message| m)
        .to(Sink::new(Arc::from(sink), Destination::queue("out")))
        .unwrap();
    let handle = pipeline.spawn();
    let mut max_gap = 0;
    loop {
        // Virtual time: the paused clock jumps straight to the next timer.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = handle.metrics().snapshot();
        assert!(
            s.in_flight <= BOUND as u64,
            "in flight {} > {BOUND}",
            s.in_flight
        );
        let received = chaos.counts(Operation::Receive).passed;
        let gap = received - s.out;
        max_gap = max_gap.max(gap);
        if s.acked == N as u64 {
            break;
        }
    }
    let report = handle.shutdown().await.unwrap();
    assert!(report.error.is_none());
    assert_eq!(report.metrics.out, N as u64);
    assert!(
        report.metrics.in_flight_peak <= BOUND as u64,
        "peak {}",
        report.metrics.in_flight_peak
    );
    // The source was held back to the sink's pace: it never ran ahead by more than the bound.
    assert!(max_gap <= BOUND as u64, "source ran {max_gap} ahead");
    assert_eq!(broker.queue_depth("out").unwrap().ready, N);
    println!(
        "100,000 messages, sink 10x slower: peak in flight {} (bound {BOUND}), source ahead by at most {max_gap}",
        report.metrics.in_flight_peak
    );
}

async fn wait_for_out(d: &TestDriver, at_least: u64) {
    for _ in 0..10_000_000 {
        if d.snapshot().out >= at_least {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the pipeline made no progress");
}

#[tokio::test(start_paused = true)]
async fn a_stateless_pipeline_killed_mid_stream_loses_nothing_on_restart() {
    const N: usize = 10_000;
    let broker = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(broker.clone());
    let mut d = TestDriver::new(backend, &["in", "out"]).await.unwrap();
    for i in 0..N {
        d.pipe("in", Message::new(i.to_string())).await.unwrap();
    }
    let build = |c: Box<dyn Consumer>, sink: Sink| {
        Pipeline::builder()
            .max_in_flight(256)
            .source(c)
            .flow()
            .then(stage("work").concurrency(16), |m: Message| async move {
                tokio::task::yield_now().await;
                Ok(Message::new(format!(
                    "done {}",
                    String::from_utf8_lossy(m.payload())
                )))
            })
            .to(sink)
            .unwrap()
    };
    d.start(build(d.consumer("in").await.unwrap(), d.sink("out")));
    wait_for_out(&d, 3_000).await;
    d.crash().await;
    let depth = broker.queue_depth("in").unwrap();
    assert!(depth.ready > 0, "the crash happened mid-stream");
    d.start(build(d.consumer("in").await.unwrap(), d.sink("out")));
    d.run_until_idle().await;
    let report = d.shutdown().await.unwrap();
    assert!(report.error.is_none());
    let out = d.read_text("out").await.unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in out {
        *seen.entry(line).or_default() += 1;
    }
    for i in 0..N {
        assert!(
            seen.contains_key(&format!("done {i}")),
            "result of {i} missing"
        );
    }
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!("stateless crash: {N} inputs, every result present, {duplicates} duplicates");
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready + depth.unacked, 0);
}

#[tokio::test(start_paused = true)]
async fn a_windowed_pipeline_killed_mid_stream_loses_no_window_result_on_restart() {
    const N: u64 = 4_000;
    const KEYS: u64 = 16;
    let broker = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(broker.clone());
    let mut d = TestDriver::new(backend, &["in", "out", "late"])
        .await
        .unwrap();
    let mut expected: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for i in 0..N {
        let key = format!("k{}", i % KEYS);
        let at = i * 100;
        *expected.entry((key.clone(), at - at % 10_000)).or_default() += 1;
        let m = Message::builder(i.to_string())
            .key(key)
            .timestamp(Timestamp::from_millis(at))
            .build()
            .unwrap();
        d.pipe("in", m).await.unwrap();
    }
    let build = |c: Box<dyn Consumer>, out: Sink, late: Sink| {
        Pipeline::builder()
            .max_in_flight(256)
            .source(c)
            .flow()
            .window(
                "tumble",
                WindowSpec::tumbling(Duration::from_secs(10))
                    .max_out_of_order(Duration::from_secs(30))
                    .late_to(late),
            )
            .count()
            .map("render", |w| {
                Message::new(format!(
                    "{} {} {}",
                    w.key.unwrap_or_default(),
                    w.window.start.as_millis(),
                    w.value
                ))
            })
            .to(out)
            .unwrap()
    };
    d.start(build(
        d.consumer("in").await.unwrap(),
        d.sink("out"),
        d.sink("late"),
    ));
    wait_for_out(&d, 100).await;
    d.crash().await;
    assert!(broker.queue_depth("in").unwrap().ready > 0, "mid-stream");
    d.start(build(
        d.consumer("in").await.unwrap(),
        d.sink("out"),
        d.sink("late"),
    ));
    d.run_until_idle().await;
    d.shutdown().await.unwrap();
    assert!(d.read("late").await.unwrap().is_empty(), "nothing was late");
    let mut got: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for line in d.read_text("out").await.unwrap() {
        let mut p = line.split(' ');
        let key = p.next().unwrap().to_owned();
        let start: u64 = p.next().unwrap().parse().unwrap();
        let count: u64 = p.next().unwrap().parse().unwrap();
        *got.entry((key, start)).or_default() += count;
    }
    let mut extra = 0;
    for (window, n) in &expected {
        let g = got.get(window).copied().unwrap_or(0);
        assert!(g >= *n, "window {window:?}: {g} counted, {n} inputs");
        extra += g - n;
    }
    let windows: HashSet<_> = expected.keys().collect();
    assert_eq!(windows.len(), got.len());
    println!(
        "windowed crash: {N} inputs in {} windows, every input counted, {extra} counted twice",
        expected.len()
    );
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready + depth.unacked, 0);
}
