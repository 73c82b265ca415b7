//! What the closed-loop producer benches share: the brokers, fresh queues, median and range,
//! and counting what arrived.

#![allow(dead_code)] // each bench uses its own part of this

use std::sync::Arc;
use std::time::Duration;

use mailroom::{Backend, ConsumerOptions, QueueSpec, Result};

/// The networked brokers, as `scripts/brokers.sh` starts them; `MAILROOM_<NAME>_URL` overrides
/// one, `MAILROOM_BENCH_BACKENDS=rabbitmq,kafka` picks some.
pub const BROKERS: [(&str, &str); 3] = [
    ("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    ("kafka", "kafka://127.0.0.1:9092"),
    ("sqs", "sqs://127.0.0.1:4566"),
];

/// (name, URL) of each broker to measure, among `names`.
pub fn brokers(names: &[&str]) -> Vec<(String, String)> {
    let chosen = std::env::var("MAILROOM_BENCH_BACKENDS").ok();
    BROKERS
        .iter()
        .filter(|(name, _)| names.contains(name))
        .filter(|(name, _)| {
            chosen
                .as_deref()
                .is_none_or(|c| c.split(',').any(|n| n == *name))
        })
        .map(|(name, url)| {
            let var = format!("MAILROOM_{}_URL", name.to_ascii_uppercase());
            (
                name.to_string(),
                std::env::var(var).unwrap_or_else(|_| url.to_string()),
            )
        })
        .collect()
}

/// A number from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A queue of its own for one run.
pub async fn fresh_queue(backend: &Arc<dyn Backend>, what: &str) -> Result<String> {
    let name = format!("mr-bench-{what}-{}", uuid_suffix());
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&name))
        .await?;
    Ok(name)
}

fn uuid_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}", nanos & 0xffff_ffff_ffff)
}

/// Receive and ack until `expected` messages came or nothing came for `quiet`; how many came.
pub async fn drain(
    backend: &Arc<dyn Backend>,
    queue: &str,
    expected: usize,
    quiet: Duration,
) -> Result<usize> {
    let mut consumer = backend.consumer(queue, ConsumerOptions::default()).await?;
    let mut got = 0;
    while got < expected {
        match consumer.receive_timeout(quiet).await? {
            Some(delivery) => {
                delivery.ack().await?;
                got += 1;
            }
            None => break,
        }
    }
    consumer.close().await?;
    Ok(got)
}

/// Median, lowest and highest.
pub fn median_and_range(mut rates: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(|a, b| a.total_cmp(b));
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

/// CPU time this process has used, in nanoseconds, summed over its live threads (Linux
/// schedstat; `None` elsewhere). On a busy machine wall-clock rates swing with other load,
/// while the client's CPU time per message does not; librdkafka's threads are counted too.
pub fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}
