//! What a stack of layers costs on the in-memory broker: the same sends, batches and
//! receive-and-acks on the bare backend and inside capability check + retry + tracing +
//! metrics (as `Registry::connect` plus an application's own layers would put it), with no
//! tracing subscriber and no metrics recorder installed (a library's usual situation).
//!
//! Three paths, each timed on a fresh broker: `send` one message at a time (every layer adds a
//! boxed future per message), `enqueue_batch` in batches of 64 with their confirms (a layer
//! adds its cost once per batch), and `try_receive` + `ack` (a layer that watches settles wraps
//! each delivery's settle handle). Rounds alternate which side goes first; the printed rates
//! are medians over the rounds, and the ratio is layered / bare. On a busy machine wall-clock
//! rates swing with other load, so the CPU time this process spent per message (Linux
//! schedstat) is printed beside them: it is the steadier of the two.
//!
//! `cargo bench -p mailroom-memory --bench layers` (MESSAGES=n, ROUNDS=n to change the size,
//! STACKS=1,2 to measure only some stacks; PATHS and ONLY: see `wanted`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::layer::{CapabilityLayer, LayerStack, MetricsLayer, RetryLayer, TracingLayer};
use mailroom_core::{Backend, Destination, Message, QueueSpec};
use mailroom_memory::MemoryBackend;

const BATCH: usize = 64;

/// CPU time this process has used, in nanoseconds, summed over its threads (Linux schedstat;
/// `None` elsewhere).
fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// One timed run: messages per second, and CPU nanoseconds per message.
#[derive(Clone, Copy)]
struct Rate {
    per_second: f64,
    cpu_per_message: Option<f64>,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The stacks measured: the capability check alone (what `Registry::connect` adds), tracing
/// and metrics together and each alone, and the whole stack.
fn stacks() -> Vec<LayerStack> {
    let all = vec![
        LayerStack::new().layer(CapabilityLayer::new()),
        // Observability alone, on vs off (issue 16's cost figure), then each half of it.
        LayerStack::new()
            .layer(TracingLayer::new())
            .layer(MetricsLayer::new()),
        LayerStack::new().layer(TracingLayer::new()),
        LayerStack::new().layer(MetricsLayer::new()),
        LayerStack::new()
            .layer(TracingLayer::new())
            .layer(MetricsLayer::new())
            .layer(RetryLayer::new())
            .layer(CapabilityLayer::new()),
    ];
    // STACKS=1,2 measures only those (0-based, in the order above).
    match std::env::var("STACKS") {
        Ok(pick) => {
            let pick: Vec<usize> = pick
                .split(',')
                .filter_map(|i| i.trim().parse().ok())
                .collect();
            all.into_iter()
                .enumerate()
                .filter(|(i, _)| pick.contains(i))
                .map(|(_, s)| s)
                .collect()
        }
        Err(_) => all,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Send,
    Batch,
    ReceiveAck,
}

impl Path {
    /// Its name in `PATHS`.
    fn key(self) -> &'static str {
        match self {
            Path::Send => "send",
            Path::Batch => "batch",
            Path::ReceiveAck => "receive",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Path::Send => "send (one by one)",
            Path::Batch => "enqueue_batch (64)",
            Path::ReceiveAck => "try_receive + ack",
        }
    }
}

fn messages(n: usize) -> Vec<Message> {
    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    (0..n).map(|_| Message::new(payload.clone())).collect()
}

/// A fresh broker with an empty queue `q`, bare or inside `layered`.
async fn broker(layered: Option<&LayerStack>) -> Arc<dyn Backend> {
    let bare: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    bare.topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    match layered {
        Some(stack) => stack.apply(bare),
        None => bare,
    }
}

/// Messages per second, and CPU per message, on `path`.
async fn run(path: Path, layered: Option<&LayerStack>, n: usize) -> Rate {
    let backend = broker(layered).await;
    let producer = backend.producer().await.unwrap();
    let dest = Destination::queue("q");
    let mut batch = messages(n);
    let cpu_started;
    let elapsed: Duration = match path {
        Path::Send => {
            cpu_started = cpu_ns();
            let started = Instant::now();
            for message in batch.drain(..) {
                producer.send(&dest, message).await.unwrap();
            }
            started.elapsed()
        }
        Path::Batch => {
            let mut chunk = Vec::with_capacity(BATCH);
            let mut pending = Vec::with_capacity(BATCH);
            cpu_started = cpu_ns();
            let started = Instant::now();
            while !batch.is_empty() {
                let take = batch.len().min(BATCH);
                chunk.extend(batch.drain(batch.len() - take..));
                producer
                    .enqueue_batch(&dest, &mut chunk, &mut pending)
                    .await;
                for confirm in pending.drain(..) {
                    confirm.unwrap().await.unwrap();
                }
            }
            started.elapsed()
        }
        Path::ReceiveAck => {
            // Filled through the bare path so only receiving is timed.
            let mut chunk = Vec::new();
            let mut pending = Vec::new();
            chunk.append(&mut batch);
            producer
                .enqueue_batch(&dest, &mut chunk, &mut pending)
                .await;
            for confirm in pending.drain(..) {
                confirm.unwrap().await.unwrap();
            }
            let mut consumer = backend.consumer("q", Default::default()).await.unwrap();
            cpu_started = cpu_ns();
            let started = Instant::now();
            for _ in 0..n {
                let delivery = match consumer.try_receive() {
                    Some(d) => d.unwrap(),
                    None => consumer.receive().await.unwrap(),
                };
                delivery.ack().await.unwrap();
            }
            started.elapsed()
        }
    };
    let cpu = cpu_started.zip(cpu_ns()).map(|(a, b)| b.saturating_sub(a));
    Rate {
        per_second: n as f64 / elapsed.as_secs_f64(),
        cpu_per_message: cpu.map(|c| c as f64 / n as f64),
    }
}

/// Whether the comma-separated list in `var` (all when unset) names `item`. `ONLY=bare` or
/// `ONLY=layered` runs one side, `PATHS=send,batch,receive` some paths: for instruction counts
/// under callgrind, where a side is measured as the difference of two runs of different sizes.
fn wanted(var: &str, item: &str) -> bool {
    match std::env::var(var) {
        Ok(list) => list.split(',').any(|i| i.trim() == item),
        Err(_) => true,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The medians of a side's rounds: rate, and CPU per message where it could be read.
fn medians(rounds: &[Rate]) -> (f64, Option<f64>) {
    let rate = median(rounds.iter().map(|r| r.per_second).collect());
    let cpu: Option<Vec<f64>> = rounds.iter().map(|r| r.cpu_per_message).collect();
    (rate, cpu.map(median))
}

fn main() {
    let n = env("MESSAGES", 200_000);
    let rounds = env("ROUNDS", 7).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("memory broker, {n} messages of 100 bytes, median of {rounds} rounds");
    for stack in stacks() {
        println!("\nlayered = {stack:?}");
        println!(
            "{:<22} {:>12} {:>14} {:>7}   {:>12} {:>14} {:>7}",
            "path",
            "bare msg/s",
            "layered msg/s",
            "ratio",
            "bare ns CPU",
            "layered ns CPU",
            "ratio"
        );
        for path in [Path::Send, Path::Batch, Path::ReceiveAck] {
            if !wanted("PATHS", path.key()) {
                continue;
            }
            let (mut bare, mut layered) = (Vec::new(), Vec::new());
            let on = Some(&stack);
            runtime.block_on(async {
                // Warm the allocator and caches once on each side.
                run(path, None, n / 10).await;
                run(path, on, n / 10).await;
                for round in 0..rounds {
                    let sides = if round % 2 == 0 {
                        [false, true]
                    } else {
                        [true, false]
                    };
                    for layers in sides {
                        match layers {
                            false if wanted("ONLY", "bare") => bare.push(run(path, None, n).await),
                            true if wanted("ONLY", "layered") => {
                                layered.push(run(path, on, n).await)
                            }
                            _ => {}
                        }
                    }
                }
                if bare.is_empty() {
                    bare = layered.clone();
                }
                if layered.is_empty() {
                    layered = bare.clone();
                }
            });
            let ((bare, bare_cpu), (layered, layered_cpu)) = (medians(&bare), medians(&layered));
            let cpu = match (bare_cpu, layered_cpu) {
                (Some(b), Some(l)) => format!("{b:>12.0} {l:>14.0} {:>7.3}", l / b),
                _ => "CPU time not readable here".to_owned(),
            };
            println!(
                "{:<22} {:>12.0} {:>14.0} {:>7.3}   {cpu}",
                path.name(),
                bare,
                layered,
                layered / bare
            );
        }
    }
}
