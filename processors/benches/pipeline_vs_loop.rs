//! memory → map → memory: the pipeline against a hand-written consume/map/produce/ack loop on
//! the same in-memory broker, in one process. Prints both rates and their ratio.
//!
//! Each side runs where the other does, in two placements: both on the thread `block_on`
//! polls (which filled the queues), and both in tasks spawned on the runtime's workers. Where
//! code runs matters about as much as the code on a 2-core machine (another thread's caches,
//! another allocator arena): the same pipeline on a worker, against the loop on the `block_on`
//! thread, used about 90 ns more CPU per message. So the two are only compared placed alike.
//! Rounds alternate which of the two goes first.
//!
//! `cargo bench -p mailroom-processors --bench pipeline_vs_loop` (MESSAGES=n to change the size).
//!
//! `ONLY=loop`, `ONLY=pipeline` or `ONLY=fill` runs one side once on the `block_on` thread (or
//! only fills its queue), for `valgrind --tool=callgrind`: instructions per message are the
//! slope between two sizes with `fill`'s slope taken off, which cancels start-up, shutdown
//! and filling. Instruction counts repeat on a loaded machine where wall-clock rates do not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{Backend, Destination, Message, Producer, QueueSpec};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Pipeline, Sink};

/// CPU time this process has used, in nanoseconds, summed over its threads (Linux
/// schedstat; `None` elsewhere). On a busy machine the wall-clock rates swing with other
/// load, while CPU time per message does not.
fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Wall-clock time and CPU time of one run.
struct Timing {
    wall: Duration,
    cpu: Option<u64>,
}

fn transform(m: &Message) -> Message {
    Message::new(m.payload().to_ascii_uppercase())
}

async fn fill(broker: &MemoryBackend, queue: &str, n: usize) {
    let topo = broker.topology();
    topo.declare_queue(&QueueSpec::new(queue)).await.unwrap();
    topo.declare_queue(&QueueSpec::new(format!("{queue}.out")))
        .await
        .unwrap();
    let producer = broker.memory_producer();
    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    for _ in 0..n {
        producer
            .send(&Destination::queue(queue), Message::new(payload.clone()))
            .await
            .unwrap();
    }
}

async fn hand_loop(broker: MemoryBackend, queue: &str, n: usize) -> Timing {
    let mut consumer = broker.consumer(queue, Default::default()).await.unwrap();
    let producer = broker.producer().await.unwrap();
    let out = Destination::queue(format!("{queue}.out"));
    let cpu = cpu_ns();
    let start = Instant::now();
    for _ in 0..n {
        let delivery = consumer.receive().await.unwrap();
        let output = transform(delivery.message());
        producer.send(&out, output).await.unwrap();
        delivery.ack().await.unwrap();
    }
    Timing {
        wall: start.elapsed(),
        cpu: cpu.zip(cpu_ns()).map(|(a, b)| b - a),
    }
}

/// The pipeline side; `watch` is how often the end is looked for.
async fn pipeline(broker: MemoryBackend, queue: &str, n: usize, watch: Duration) -> Timing {
    let consumer = broker.consumer(queue, Default::default()).await.unwrap();
    let producer: Arc<dyn Producer> = Arc::from(broker.producer().await.unwrap());
    let pipeline = Pipeline::builder()
        .max_in_flight(1024)
        .source(consumer)
        .flow()
        .map("upper", |m: Message| transform(&m))
        .to(Sink::new(
            producer,
            Destination::queue(format!("{queue}.out")),
        ))
        .unwrap();
    let cpu = cpu_ns();
    let start = Instant::now();
    let metrics = pipeline.metrics();
    let mut timing = None;
    // Timed runs look every millisecond: the end is seen at most 1 ms late (under 1% of a run,
    // counted against the pipeline). Then the pipeline drains and stops, outside the timing.
    let report = pipeline
        .run_until(async {
            while metrics.snapshot().acked < n as u64 {
                tokio::time::sleep(watch).await;
            }
            timing = Some(Timing {
                wall: start.elapsed(),
                cpu: cpu.zip(cpu_ns()).map(|(a, b)| b - a),
            });
        })
        .await;
    assert_eq!(report.metrics.out, n as u64);
    timing.unwrap()
}

/// Where both sides run in a round.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// On the thread that `block_on` polls.
    BlockOn,
    /// In a task spawned on a runtime worker.
    Spawned,
}

/// Run one side, placed as asked.
async fn placed<F>(placement: Placement, side: F) -> Timing
where
    F: std::future::Future<Output = Timing> + Send + 'static,
{
    match placement {
        Placement::BlockOn => side.await,
        Placement::Spawned => tokio::spawn(side).await.unwrap(),
    }
}

/// Rates (messages/s) and CPU per message of both sides over the rounds of one placement.
#[derive(Default)]
struct Figures {
    loop_rates: Vec<f64>,
    pipe_rates: Vec<f64>,
    loop_cpu: Vec<f64>,
    pipe_cpu: Vec<f64>,
}

impl Figures {
    fn record(&mut self, n: usize, l: Timing, p: Timing) {
        self.loop_rates.push(n as f64 / l.wall.as_secs_f64());
        self.pipe_rates.push(n as f64 / p.wall.as_secs_f64());
        if let (Some(l), Some(p)) = (l.cpu, p.cpu) {
            self.loop_cpu.push(l as f64 / n as f64);
            self.pipe_cpu.push(p as f64 / n as f64);
        }
    }

    fn print(self, title: &str) {
        let l = median(self.loop_rates);
        let p = median(self.pipe_rates);
        println!("{title}");
        println!("  hand-written loop : {l:>12.0} msg/s");
        println!("  pipeline          : {p:>12.0} msg/s");
        println!("  ratio (pipeline / loop): {:.2}", p / l);
        if !self.loop_cpu.is_empty() {
            // The pipeline's figure includes its watcher waking every millisecond.
            let (l, p) = (median(self.loop_cpu), median(self.pipe_cpu));
            println!(
                "  CPU per message: loop {l:.0} ns, pipeline {p:.0} ns (ratio loop / pipeline: {:.2})",
                l / p
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const ROUNDS: usize = 5;

/// One side once (or just the fill), for callgrind.
async fn only_one(side: &str, n: usize) {
    let broker = MemoryBackend::new();
    fill(&broker, side, n).await;
    match side {
        "loop" => {
            hand_loop(broker, side, n).await;
        }
        // Under valgrind a millisecond is a few messages: waking that often would be counted
        // per message.
        "pipeline" => {
            pipeline(broker, side, n, Duration::from_millis(100)).await;
        }
        "fill" => {}
        other => panic!("ONLY={other}: expected loop, pipeline or fill"),
    }
}

fn main() {
    let n: usize = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(only) = std::env::var("ONLY") {
        runtime.block_on(only_one(&only, n));
        return;
    }
    runtime.block_on(async {
        println!("memory -> map -> memory, {n} messages of 100 bytes, median of {ROUNDS} rounds");
        for (placement, title) in [
            (Placement::BlockOn, "both on the block_on thread:"),
            (
                Placement::Spawned,
                "both in spawned tasks (runtime workers):",
            ),
        ] {
            let mut figures = Figures::default();
            for round in 0..ROUNDS {
                let broker = MemoryBackend::new();
                fill(&broker, "loop", n).await;
                fill(&broker, "pipe", n).await;
                let looped = hand_loop(broker.clone(), "loop", n);
                let piped = pipeline(broker.clone(), "pipe", n, Duration::from_millis(1));
                // Alternate which goes first so neither always gets the warmer caches.
                let (l, p) = if round % 2 == 0 {
                    let l = placed(placement, looped).await;
                    (l, placed(placement, piped).await)
                } else {
                    let p = placed(placement, piped).await;
                    (placed(placement, looped).await, p)
                };
                figures.record(n, l, p);
            }
            figures.print(title);
        }
    });
}
