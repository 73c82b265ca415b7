//! Throughput bought by a weaker delivery guarantee: on RabbitMQ `confirmed` (publisher
//! confirms) vs `unconfirmed` (written to the connection); on Kafka `confirmed` (`acks=all`,
//! idempotent) vs `leader_confirmed` (`acks=1`) vs `unconfirmed` (`acks=0`).
//!
//! Each run sends `N` 100-byte messages through one producer opened with the level
//! (`Backend::producer_with`) into a fresh queue, closed loop: `enqueue` one by one with at most
//! `WINDOW` confirms outstanding, then `flush`. The rate is messages over the time from the
//! first enqueue to the end of the flush (the producer's side: what an application waiting on
//! its sends sees); the first message is sent and confirmed before the clock starts, so a new
//! producer's set-up (Kafka's producer id for idempotence, topic metadata) is not counted. Then, untimed, the queue is drained and the arrivals counted: a weaker level
//! gives up the news of a loss, and in the normal case nothing is lost. Rounds rotate the order
//! of the levels; rates are medians over the rounds with their range.
//!
//! `cargo bench -p mailroom-bench --all-features --bench guarantees` (env `N`, default 20,000;
//! `WINDOW`, default 1,024; `ROUNDS`, default 5; `DRAIN=0` to skip the arrival count;
//! `MAILROOM_BENCH_BACKENDS=rabbitmq,kafka`; `MAILROOM_<NAME>_URL`).

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mailroom::{
    Backend, DeliveryGuarantee, Destination, Message, PendingConfirm, ProducerOptions, Result,
};

struct Run {
    rate: f64,
    arrived: Option<usize>,
}

async fn run(
    backend: &Arc<dyn Backend>,
    level: DeliveryGuarantee,
    n: usize,
    window: usize,
    drain: bool,
) -> Result<Run> {
    let queue = common::fresh_queue(backend, level.as_str()).await?;
    let producer = backend
        .producer_with(ProducerOptions::default().guarantee(level))
        .await?;
    let dest = Destination::queue(&queue);
    let body = Bytes::from(vec![b'g'; 100]);
    // One message before the clock starts, at every level alike: a new producer's set-up (the
    // topic's metadata, Kafka's producer id for idempotence, RabbitMQ's channel) is paid once
    // per producer and is not what the level changes. It is counted as sent below.
    producer.send(&dest, Message::new(body.clone())).await?;
    let mut outstanding: VecDeque<PendingConfirm> = VecDeque::with_capacity(window);
    let start = Instant::now();
    for _ in 1..n {
        if outstanding.len() >= window {
            if let Some(confirm) = outstanding.pop_front() {
                confirm.await?;
            }
        }
        outstanding.push_back(producer.enqueue(&dest, Message::new(body.clone())).await?);
    }
    for confirm in outstanding {
        confirm.await?;
    }
    producer.flush().await?;
    let rate = (n - 1) as f64 / start.elapsed().as_secs_f64();
    producer.close().await?;
    let arrived = if drain {
        Some(common::drain(backend, &queue, n, Duration::from_secs(10)).await?)
    } else {
        None
    };
    backend.topology().delete_queue(&queue).await?;
    Ok(Run { rate, arrived })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n = common::env("N", 20_000).max(2);
    let window = common::env("WINDOW", 1_024).max(1);
    let rounds = common::env("ROUNDS", 5).max(1);
    let drain = common::env("DRAIN", 1) != 0;
    for (name, url) in common::brokers(&["rabbitmq", "kafka"]) {
        let backend = mailroom::connect(&url).await?;
        let levels: Vec<DeliveryGuarantee> =
            backend.capabilities().delivery_guarantees.iter().collect();
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); levels.len()];
        let mut arrived = vec![0usize; levels.len()];
        for round in 0..rounds {
            for k in 0..levels.len() {
                let i = (k + round) % levels.len();
                let r = run(&backend, levels[i], n, window, drain).await?;
                rates[i].push(r.rate);
                arrived[i] += r.arrived.unwrap_or(0);
            }
        }
        println!(
            "{name} ({}), {n} x 100 B, window {window}, median of {rounds} rounds (range)",
            mailroom::url::redact(&url)
        );
        let mut confirmed = None;
        for ((level, r), got) in levels.iter().zip(rates).zip(arrived) {
            let (median, low, high) = common::median_and_range(r);
            let base = *confirmed.get_or_insert(median);
            let delivered = if drain {
                format!("  arrived {got}/{}", n * rounds)
            } else {
                String::new()
            };
            println!(
                "  {:<17} {median:>10.0} msgs/s  ({low:.0}–{high:.0})  x{:.2} of confirmed{delivered}",
                level.as_str(),
                median / base
            );
        }
        backend.close().await?;
    }
    Ok(())
}
