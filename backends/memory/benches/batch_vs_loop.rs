//! A batch API must be at least as fast as the loop it replaces: `send_batch` in batches of 64
//! against a loop of `send`, the same 100-byte messages into a fresh queue on the in-memory
//! broker, drained after each run (not timed). Rounds alternate which side goes first; the
//! printed rates are medians over the rounds, with their range, and the ratio is batch / loop.
//!
//! `cargo bench -p mailroom-memory --bench batch_vs_loop` (MESSAGES=n, ROUNDS=n to change it).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mailroom_core::{Backend, Destination, Message, QueueSpec};
use mailroom_memory::MemoryBackend;

const BATCH: usize = 64;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
enum Way {
    Loop,
    Batch,
}

/// Messages per second for one way of sending `messages` messages.
async fn run(way: Way, messages: usize) -> f64 {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    backend
        .topology()
        .declare_queue(&QueueSpec::new("bench").durable(false))
        .await
        .expect("declare");
    let producer = backend.producer().await.expect("producer");
    let destination = Destination::queue("bench");
    let body = Bytes::from(vec![b'm'; 100]);
    let start = Instant::now();
    match way {
        Way::Loop => {
            for _ in 0..messages {
                producer
                    .send(&destination, Message::new(body.clone()))
                    .await
                    .expect("send");
            }
        }
        Way::Batch => {
            let mut left = messages;
            while left > 0 {
                let n = left.min(BATCH);
                let batch = (0..n).map(|_| Message::new(body.clone())).collect();
                for result in producer
                    .send_batch(&destination, batch)
                    .await
                    .expect("batch")
                {
                    result.expect("confirmed");
                }
                left -= n;
            }
        }
    }
    messages as f64 / start.elapsed().as_secs_f64()
}

fn median_and_range(mut rates: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(|a, b| a.total_cmp(b));
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

fn main() {
    let messages = env("MESSAGES", 200_000);
    let rounds = env("ROUNDS", 7).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut loops, mut batches) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Way::Loop, Way::Batch]
            } else {
                [Way::Batch, Way::Loop]
            };
            for way in order {
                let rate = run(way, messages).await;
                match way {
                    Way::Loop => loops.push(rate),
                    Way::Batch => batches.push(rate),
                }
            }
        }
    });
    let (loop_median, loop_low, loop_high) = median_and_range(loops);
    let (batch_median, batch_low, batch_high) = median_and_range(batches);
    println!("memory://, {messages} messages of 100 B, median of {rounds} rounds (range)");
    println!("  send loop         {loop_median:>12.0} msgs/s  ({loop_low:.0}–{loop_high:.0})");
    println!(
        "  send_batch({BATCH:>3})   {batch_median:>12.0} msgs/s  ({batch_low:.0}–{batch_high:.0})"
    );
    println!("  ratio batch/loop  {:>12.2}", batch_median / loop_median);
}
