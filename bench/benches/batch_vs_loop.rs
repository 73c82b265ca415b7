//! A batch API must be at least as fast as the loop it replaces, on every networked backend
//! (memory has its own: `cargo bench -p mailroom-memory --bench batch_vs_loop`).
//!
//! Per broker, four ways of sending 100-byte messages to a fresh queue, each for a fixed time:
//!
//! - `send loop`: `send` one message, await its confirm, next (what `send_batch` replaces
//!   literally, and the contract memory's bench holds);
//! - `enqueue loop`: `enqueue` 64 messages one by one, then await their 64 confirms (the
//!   pipelined loop a user who knows `enqueue` writes; the harder baseline);
//! - `send_batch`: `send_batch` of 64;
//! - `enqueue_batch`: `enqueue_batch` of 64, then await the confirms.
//!
//! Rounds rotate the order of the ways; the printed rates are medians over the rounds with their
//! range, and the ratios are of medians. Beside each rate, the client's CPU time per message
//! (this process, librdkafka's threads included; median): on a busy machine the wall-clock rates
//! swing with other load, the CPU cost much less.
//!
//! `cargo bench -p mailroom-bench --all-features --bench batch_vs_loop` (env `SECONDS_PER_WAY`,
//! default 2; `ROUNDS`, default 5; `MAILROOM_BENCH_BACKENDS=rabbitmq,kafka,sqs`;
//! `MAILROOM_<NAME>_URL`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mailroom::{Backend, Destination, Message, Result};

const BATCH: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    SendLoop,
    EnqueueLoop,
    SendBatch,
    EnqueueBatch,
}

const WAYS: [Way; 4] = [
    Way::SendLoop,
    Way::EnqueueLoop,
    Way::SendBatch,
    Way::EnqueueBatch,
];

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::SendLoop => "send loop",
            Way::EnqueueLoop => "enqueue loop (64)",
            Way::SendBatch => "send_batch(64)",
            Way::EnqueueBatch => "enqueue_batch(64)",
        }
    }
}

fn batch(body: &Bytes, n: usize) -> Vec<Message> {
    (0..n).map(|_| Message::new(body.clone())).collect()
}

/// Messages per second, and CPU nanoseconds per message, for one way sending for `time` into
/// a fresh queue.
async fn run(backend: &Arc<dyn Backend>, way: Way, time: Duration) -> Result<(f64, f64)> {
    let queue = common::fresh_queue(backend, "batch").await?;
    let producer = backend.producer().await?;
    let dest = Destination::queue(&queue);
    let body = Bytes::from(vec![b'm'; 100]);
    let mut sent = 0usize;
    let mut messages = Vec::with_capacity(BATCH);
    let mut pending = Vec::with_capacity(BATCH);
    let cpu = common::cpu_ns();
    let start = Instant::now();
    while start.elapsed() < time {
        match way {
            Way::SendLoop => {
                producer.send(&dest, Message::new(body.clone())).await?;
                sent += 1;
            }
            Way::EnqueueLoop => {
                for message in batch(&body, BATCH) {
                    pending.push(producer.enqueue(&dest, message).await);
                }
                for confirm in pending.drain(..) {
                    confirm?.await?;
                }
                sent += BATCH;
            }
            Way::SendBatch => {
                for result in producer.send_batch(&dest, batch(&body, BATCH)).await? {
                    result?;
                }
                sent += BATCH;
            }
            Way::EnqueueBatch => {
                messages.extend(batch(&body, BATCH));
                producer
                    .enqueue_batch(&dest, &mut messages, &mut pending)
                    .await;
                for confirm in pending.drain(..) {
                    confirm?.await?;
                }
                sent += BATCH;
            }
        }
    }
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    let cpu_per_message = cpu
        .zip(common::cpu_ns())
        .map_or(f64::NAN, |(a, b)| (b - a) as f64 / sent as f64);
    producer.close().await?;
    backend.topology().delete_queue(&queue).await?;
    Ok((rate, cpu_per_message))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let time = Duration::from_secs(common::env("SECONDS_PER_WAY", 2) as u64);
    let rounds = common::env("ROUNDS", 5).max(1);
    for (name, url) in common::brokers(&["rabbitmq", "kafka", "sqs"]) {
        let backend = mailroom::connect(&url).await?;
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); WAYS.len()];
        let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); WAYS.len()];
        for round in 0..rounds {
            for k in 0..WAYS.len() {
                let i = (k + round) % WAYS.len();
                let (rate, cpu) = run(&backend, WAYS[i], time).await?;
                rates[i].push(rate);
                cpus[i].push(cpu);
            }
        }
        println!(
            "{name} ({}), 100 B, {}s per way, median of {rounds} rounds (range)",
            mailroom::url::redact(&url),
            time.as_secs()
        );
        let mut cpu_medians = Vec::new();
        let medians: Vec<f64> = rates
            .into_iter()
            .zip(cpus)
            .zip(WAYS)
            .map(|((r, c), way)| {
                let (median, low, high) = common::median_and_range(r);
                let (cpu, cpu_low, cpu_high) = common::median_and_range(c);
                cpu_medians.push(cpu);
                println!(
                    "  {:<18} {median:>10.0} msgs/s  ({low:.0}–{high:.0})   CPU {:>6.1} µs/msg ({:.1}–{:.1})",
                    way.label(),
                    cpu / 1e3,
                    cpu_low / 1e3,
                    cpu_high / 1e3
                );
                median
            })
            .collect();
        println!(
            "  ratio send_batch / send loop        {:>6.2}",
            medians[2] / medians[0]
        );
        println!(
            "  ratio send_batch / enqueue loop     {:>6.2}",
            medians[2] / medians[1]
        );
        println!(
            "  ratio enqueue_batch / enqueue loop  {:>6.2}",
            medians[3] / medians[1]
        );
        println!(
            "  CPU per message, enqueue loop / send_batch {:>5.2}, enqueue loop / enqueue_batch {:>5.2} (above 1: the batch is cheaper)",
            cpu_medians[1] / cpu_medians[2],
            cpu_medians[1] / cpu_medians[3]
        );
        backend.close().await?;
    }
    Ok(())
}
