//! memory → map → memory: the pipeline against a hand-written consume/map/produce/ack loop on
//! the same in-memory broker, in one process. Prints both rates and their ratio.
//!
//! The loop runs where `block_on` polls it (the thread that filled the queues); the pipeline
//! runs in its own task, on a runtime worker. On a 2-core machine the loop alone is markedly
//! slower in a spawned task (the pipeline is not faster on the `block_on` thread), which lifts
//! the ratio by about 0.15: keep that in mind when comparing figures.
//!
//! `cargo bench -p mailroom-processors --bench pipeline_vs_loop` (MESSAGES=n to change the size).

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

async fn hand_loop(broker: &MemoryBackend, queue: &str, n: usize) -> Timing {
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

async fn pipeline(broker: &MemoryBackend, queue: &str, n: usize) -> Timing {
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
    let handle = pipeline.spawn();
    // Polled every millisecond: the end is seen at most 1 ms late (under 1% of a run, counted
    // against the pipeline), and the watcher's wake-ups cost the pipeline's CPU little.
    while handle.metrics().snapshot().acked < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let timing = Timing {
        wall: start.elapsed(),
        cpu: cpu.zip(cpu_ns()).map(|(a, b)| b - a),
    };
    let report = handle.shutdown().await.unwrap();
    assert_eq!(report.metrics.out, n as u64);
    timing
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    runtime.block_on(async {
        let mut loop_rates = Vec::new();
        let mut pipe_rates = Vec::new();
        let mut loop_cpu = Vec::new();
        let mut pipe_cpu = Vec::new();
        for round in 0..5 {
            let broker = MemoryBackend::new();
            fill(&broker, "loop", n).await;
            fill(&broker, "pipe", n).await;
            // Alternate which goes first so neither always gets the warmer caches.
            let (l, p) = if round % 2 == 0 {
                let l = hand_loop(&broker, "loop", n).await;
                (l, pipeline(&broker, "pipe", n).await)
            } else {
                let p = pipeline(&broker, "pipe", n).await;
                (hand_loop(&broker, "loop", n).await, p)
            };
            loop_rates.push(n as f64 / l.wall.as_secs_f64());
            pipe_rates.push(n as f64 / p.wall.as_secs_f64());
            if let (Some(l), Some(p)) = (l.cpu, p.cpu) {
                loop_cpu.push(l as f64 / n as f64);
                pipe_cpu.push(p as f64 / n as f64);
            }
        }
        let l = median(loop_rates);
        let p = median(pipe_rates);
        println!("memory -> map -> memory, {n} messages of 100 bytes, median of 5 rounds");
        println!("hand-written loop : {l:>12.0} msg/s");
        println!("pipeline          : {p:>12.0} msg/s");
        println!("ratio (pipeline / loop): {:.2}", p / l);
        if !loop_cpu.is_empty() {
            // The pipeline's figure includes the watcher above waking every millisecond.
            let (l, p) = (median(loop_cpu), median(pipe_cpu));
            println!("CPU per message: loop {l:.0} ns, pipeline {p:.0} ns (ratio loop / pipeline: {:.2})", l / p);
        }
    });
}
