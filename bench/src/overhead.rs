//! The harness's own cost: the raw mpsc driver run through the harness (scheduling, timestamps,
//! histograms, confirm tracking) against a bare loop moving the same messages through the same
//! channel. The ratio says how much of any measured rate the harness itself could be eating.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use mailroom_core::Result;

use super::driver::{now_us, RawMpscDriver, RAW_MPSC_CAPACITY};
use super::runner::{self, RunOptions};
use super::workload::Workload;

/// The two rates and their ratio.
#[derive(Debug, Clone, Copy)]
pub struct Overhead {
    /// Messages per second of the bare loop (median of the rounds).
    pub bare_rate: f64,
    /// Messages per second through the harness (median of the rounds).
    pub harness_rate: f64,
    /// `harness_rate / bare_rate`: 1.0 means the harness costs nothing.
    pub ratio: f64,
    /// Rounds of each.
    pub rounds: usize,
    /// Length of each round.
    pub round: Duration,
}

/// A bare loop: one task sends `(timestamp, payload)` into a bounded mpsc as fast as it can for
/// `duration`, another receives and counts. Returns msgs/s. Both ends use the channel as the
/// harness's raw mpsc driver does (`try_send` / `try_recv` first, the waiting calls only when
/// the channel is full / empty), so the two sides do the same channel work.
pub async fn bare_loop(duration: Duration, payload_size: usize) -> f64 {
    use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(RAW_MPSC_CAPACITY);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let consumer = tokio::spawn(async move {
        loop {
            let message = match rx.try_recv() {
                Ok(message) => message,
                Err(TryRecvError::Empty) => match rx.recv().await {
                    Some(message) => message,
                    None => break,
                },
                Err(TryRecvError::Disconnected) => break,
            };
            std::hint::black_box(&message);
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let body = Bytes::from(vec![b'm'; payload_size]);
    let flag = stop.clone();
    let producer = tokio::spawn(async move {
        while !flag.load(Ordering::Relaxed) {
            match tx.try_send((now_us(), body.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    if tx.send(message).await.is_err() {
                        break;
                    }
                }
                Err(TrySendError::Closed(_)) => break,
            }
        }
    });
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let count = received.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = producer.await;
    let _ = consumer.await;
    count as f64 / elapsed.as_secs_f64()
}

/// The same through the harness: the raw mpsc driver with a rate so high the schedule never
/// waits, so the harness runs flat out. Returns the consume rate, msgs/s.
pub async fn through_harness(duration: Duration, payload_size: usize) -> Result<f64> {
    let yaml = format!(
        "name: harness overhead\ntopics: 1\npartitionsPerTopic: 1\nmessageSize: {payload_size}\n\
         subscriptionsPerTopic: 1\nconsumerPerSubscription: 1\nproducersPerTopic: 1\n\
         producerRate: 1000000000\ntestDurationSeconds: {}\nwarmupDurationSeconds: 0.2\n",
        duration.as_secs_f64()
    );
    let plan =
        Workload::from_yaml(&yaml, "(harness overhead)")?.plan("(harness overhead)", None)?;
    let options = RunOptions {
        print_stats: false,
        progress: false,
        stats_interval: duration,
        url: "raw-mpsc".into(),
    };
    let result = runner::run(Arc::new(RawMpscDriver::new()), &plan, &options).await?;
    Ok(result.mailroom.consume_rate_avg)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Alternate `rounds` rounds of each (so machine noise lands on both) and compare medians.
pub async fn measure(round: Duration, rounds: usize, payload_size: usize) -> Result<Overhead> {
    let rounds = rounds.max(1);
    let mut bare = Vec::new();
    let mut harness = Vec::new();
    for _ in 0..rounds {
        bare.push(bare_loop(round, payload_size).await);
        harness.push(through_harness(round, payload_size).await?);
    }
    let bare_rate = median(&mut bare);
    let harness_rate = median(&mut harness);
    Ok(Overhead {
        bare_rate,
        harness_rate,
        ratio: if bare_rate > 0.0 {
            harness_rate / bare_rate
        } else {
            0.0
        },
        rounds,
        round,
    })
}
