//! Backpressure with bounded memory, and crash-restart without loss (stateless and windowed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as A};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{
    Backend, Consumer, Delivery, Destination, Message, PendingConfirm, Producer, Result, Timestamp,
};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{stage, Pipeline, Sink, TestDriver, WindowSpec};

/// A sink that accepts at once but confirms one message per `delay`, like a slow broker with
/// asynchronous confirms.
struct SlowSink {
    inner: Arc<dyn Producer>,
    delay: Duration,
    lock: Arc<tokio::sync::Mutex<()>>,
}

#[async_trait]
impl Producer for SlowSink {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        let (inner, lock, delay, destination) = (
            self.inner.clone(),
            self.lock.clone(),
            self.delay,
            destination.clone(),
        );
        Ok(PendingConfirm::waiting(async move {
            let _one_at_a_time = lock.lock().await;
            tokio::time::sleep(delay).await;
            inner.send(&destination, message).await
        }))
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A source that takes `delay` per receive.
struct SlowSource {
    inner: Box<dyn Consumer>,
    delay: Duration,
    received: Arc<AtomicUsize>,
}

#[async_trait]
impl Consumer for SlowSource {
    async fn receive(&mut self) -> Result<Delivery> {
        tokio::time::sleep(self.delay).await;
        let d = self.inner.receive().await?;
        self.received.fetch_add(1, A::Relaxed);
        Ok(d)
    }
    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_sink_ten_times_slower_than_the_source_keeps_in_flight_within_the_bound() {
    const N: usize = 100_000;
    const BOUND: usize = 64;
    let broker = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(broker.clone());
    let d = TestDriver::new(backend.clone(), &["in", "out"])
        .await
        .unwrap();
    let producer = broker.memory_producer();
    for i in 0..N {
        producer
            .send(&Destination::queue("in"), Message::new(i.to_string()))
            .await
            .unwrap();
    }
    let received = Arc::new(AtomicUsize::new(0));
    let source = SlowSource {
        inner: d.consumer("in").await.unwrap(),
        delay: Duration::from_millis(1),
        received: received.clone(),
    };
    let sink = SlowSink {
        inner: Arc::from(backend.producer().await.unwrap()),
        delay: Duration::from_millis(10),
        lock: Default::default(),
    };
    let pipeline = Pipeline::builder()
        .max_in_flight(BOUND)
        .source(Box::new(source) as Box<dyn Consumer>)
        .flow()
        .map("tag", |m: Message| m)
        .to(Sink::new(Arc::new(sink), Destination::queue("out")))
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
        let gap = received.load(A::Relaxed) as u64 - s.out;
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
