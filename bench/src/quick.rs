//! The quick benchmark behind `mailroom bench` with no workload: throughput and latency of one
//! producer and one consumer on any backend, and the same work on a raw `tokio::sync::mpsc`
//! channel, so the abstraction's cost is a ratio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pacer::Pacer;
use bytes::Bytes;
use hdrhistogram::Histogram;
use mailroom_core::{
    Backend, Capability, ConsumerOptions, Destination, Error, Message, Overflow, QueueSpec, Result,
    TryAck, TryEnqueue,
};

/// Header carrying the intended send time, in microseconds since the run's start.
const SENT_AT_HEADER: &str = "x-mailroom-bench-intended-us";

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Messages in the throughput run.
    pub messages: u64,
    /// Payload bytes per message.
    pub payload_size: usize,
    /// Queue bound (and mpsc capacity), so both sides feel the same backpressure.
    pub queue_bound: u64,
    /// Paced rate of the latency run, messages per second.
    pub latency_rate: u64,
    /// Length of the latency run.
    pub latency_duration: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            messages: 200_000,
            payload_size: 100,
            queue_bound: 1024,
            latency_rate: 20_000,
            latency_duration: Duration::from_secs(3),
        }
    }
}

/// Messages moved end to end (sent, received, acked) and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Messages acked.
    pub messages: u64,
    /// Wall time from first send to last ack.
    pub elapsed: Duration,
}

impl Throughput {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// End-to-end latency percentiles, in microseconds, measured from the intended send time, and
/// the publish delay (actual − intended send) that shows how well the pacer kept the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Messages measured.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Publish delay, median.
    pub delay_p50_us: u64,
    /// Publish delay, 99th percentile.
    pub delay_p99_us: u64,
}

fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'm'; size])
}

async fn bench_queue(backend: &dyn Backend, bound: u64) -> Result<String> {
    let id = mailroom_core::MessageId::generate().to_string();
    let name = format!("mailroom-bench-{}", &id[..8]);
    let mut spec = QueueSpec::new(&name).durable(false);
    if backend.capabilities().supports(Capability::MaxQueueLength) {
        spec = spec.max_length(bound, Overflow::Backpressure);
    }
    backend.topology().declare_queue(&spec).await?;
    Ok(name)
}

/// One producer and one consumer move `messages` through a fresh queue; every message is acked.
pub async fn throughput(backend: Arc<dyn Backend>, config: &BenchConfig) -> Result<Throughput> {
    let queue = bench_queue(backend.as_ref(), config.queue_bound).await?;
    let producer = backend.producer().await?;
    let mut consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
    let n = config.messages;
    let body = payload(config.payload_size);
    let start = Instant::now();
    let consume = tokio::spawn(async move {
        for _ in 0..n {
            // What is already there is taken without a future, as a draining loop (a
            // pipeline's source) does; only an empty queue is waited on.
            let delivery = match consumer.try_receive() {
                Some(ready) => ready?,
                None => consumer.receive().await?,
            };
            // Acked at once where the broker settles synchronously, awaited otherwise.
            match delivery.try_ack() {
                TryAck::Done(acked) => acked?,
                TryAck::Wait(delivery) => delivery.ack().await?,
            }
        }
        consumer.close().await?;
        Ok::<_, Error>(())
    });
    let dest = Destination::queue(&queue);
    for _ in 0..n {
        // Each confirm is awaited before the next send, as a careful producer would; a
        // producer that takes the message at once (`try_enqueue`) spares the send's future.
        match producer.try_enqueue(&dest, Message::new(body.clone())) {
            TryEnqueue::Done(pending) => {
                pending?.await?;
            }
            TryEnqueue::Wait(message) => {
                producer.send(&dest, message).await?;
            }
        }
    }
    producer.close().await?;
    consume.await.map_err(|e| {
        Error::new(
            mailroom_core::ErrorKind::Broker,
            format!("consumer task: {e}"),
        )
    })??;
    let elapsed = start.elapsed();
    let _ = backend.topology().delete_queue(&queue).await;
    Ok(Throughput {
        messages: n,
        elapsed,
    })
}

/// The same work on a raw bounded `tokio::sync::mpsc` channel: `Bytes` payloads in, an atomic
/// "ack" per message out. This is the floor the in-memory backend is measured against.
pub async fn throughput_raw_mpsc(config: &BenchConfig) -> Throughput {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(config.queue_bound as usize);
    let acked = Arc::new(AtomicU64::new(0));
    let n = config.messages;
    let body = payload(config.payload_size);
    let start = Instant::now();
    let acks = acked.clone();
    let consume = tokio::spawn(async move {
        loop {
            // The same shape as the backend's loop: take what is there, wait only when empty.
            let message = match rx.try_recv() {
                Ok(message) => message,
                Err(_) => match rx.recv().await {
                    Some(message) => message,
                    None => break,
                },
            };
            std::hint::black_box(&message);
            acks.fetch_add(1, Ordering::Release);
        }
    });
    for _ in 0..n {
        if tx.send(body.clone()).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = consume.await;
    Throughput {
        messages: acked.load(Ordering::Acquire),
        elapsed: start.elapsed(),
    }
}

/// Open-loop latency: sends paced to an intended time by the [`Pacer`], latency measured from
/// that intended time (so a stalled producer cannot hide latency), every message acked.
pub async fn latency(backend: Arc<dyn Backend>, config: &BenchConfig) -> Result<Latency> {
    let queue = bench_queue(backend.as_ref(), config.queue_bound).await?;
    let producer = backend.producer().await?;
    let mut consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
    let total = (config.latency_rate as f64 * config.latency_duration.as_secs_f64()) as u64;
    let body = payload(config.payload_size);
    let mut pacer = Pacer::new(config.latency_rate.max(1) as f64);
    let origin = pacer.intended(0);
    let mut delays = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| Error::config(format!("histogram: {e}")))?;
    let consume = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| Error::config(format!("histogram: {e}")))?;
        for _ in 0..total {
            let delivery = consumer.receive().await?;
            let intended: u64 = delivery
                .message()
                .headers()
                .get(SENT_AT_HEADER)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let now = origin.elapsed().as_micros() as u64;
            histogram.saturating_record(now.saturating_sub(intended).max(1));
            delivery.ack().await?;
        }
        consumer.close().await?;
        Ok::<_, Error>(histogram)
    });
    let dest = Destination::queue(&queue);
    for _ in 0..total {
        let permit = pacer.next().await;
        let intended = permit.intended - origin;
        delays.saturating_record((permit.intended.elapsed().as_micros() as u64).max(1));
        let message = Message::builder(body.clone())
            .header(SENT_AT_HEADER, intended.as_micros().to_string())
            .build()?;
        producer.send(&dest, message).await?;
    }
    producer.close().await?;
    let histogram = consume.await.map_err(|e| {
        Error::new(
            mailroom_core::ErrorKind::Broker,
            format!("consumer task: {e}"),
        )
    })??;
    let _ = backend.topology().delete_queue(&queue).await;
    Ok(Latency {
        count: histogram.len(),
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        delay_p50_us: delays.value_at_quantile(0.50),
        delay_p99_us: delays.value_at_quantile(0.99),
    })
}
