//! mailroom-kafka vs raw rdkafka on the same broker, in one process: 1 KiB messages, produce
//! with every delivery report awaited, then consume with offsets stored per message and
//! committed (auto-commit of stored offsets, plus a final synchronous commit). Raw rdkafka uses
//! the backend's own librdkafka properties.
//!
//! The raw producer writes the same record shape mailroom writes (key, payload, an id and a
//! millisecond timestamp header), so the broker stores and serves the same bytes for both and
//! the ratio measures the client side only.
//!
//! `cargo bench -p mailroom-kafka --bench vs_rdkafka` (env `MAILROOM_KAFKA_URL`,
//! `MAILROOM_BENCH_MESSAGES`, default 10,000).

use std::time::{Duration, Instant};

use mailroom_core::{Backend, ConsumerOptions, Destination, Message, QueueSpec};
use mailroom_kafka::{KafkaBackend, KafkaConfig, ID_HEADER, TIMESTAMP_HEADER};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const SIZE: usize = 1024;

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

fn fresh(what: &str) -> String {
    format!(
        "mr-bench-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn raw_produce(config: &KafkaConfig, topic: &str, n: usize, payload: &[u8]) -> Duration {
    // The backend's own properties, so both sides produce alike.
    let p: FutureProducer = config.producer_client_config().create().unwrap();
    let start = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let key = (i % 64).to_string();
        let id = uuid::Uuid::new_v4().to_string();
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .to_string();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: ID_HEADER,
                value: Some(&id),
            })
            .insert(Header {
                key: TIMESTAMP_HEADER,
                value: Some(&millis),
            });
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(payload)
            .headers(headers);
        pending.push(p.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    start.elapsed()
}

async fn raw_consume(config: &KafkaConfig, topic: &str, n: usize) -> ConsumeTiming {
    let c: StreamConsumer = config.consumer_client_config(topic).create().unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut clock = ConsumeClock::start();
    for _ in 0..n {
        let m = c.recv().await.unwrap();
        c.store_offset_from_message(&m).unwrap();
        clock.settled();
    }
    // Both sides stop the clock at the last settled message: auto-commit runs during both runs,
    // and the final commit (here) and close (mailroom: commit + leave the group) are left out
    // of both, since leaving a group is not consumption.
    let timing = clock.stop();
    c.commit_consumer_state(CommitMode::Sync).unwrap();
    timing
}

async fn mailroom_produce(b: &KafkaBackend, topic: &str, n: usize, payload: &[u8]) -> Duration {
    let p = b.producer().await.unwrap();
    let dest = Destination::queue(topic);
    let payload = bytes::Bytes::copy_from_slice(payload);
    let start = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let m = Message::builder(payload.clone())
            .key((i % 64).to_string())
            .build()
            .unwrap();
        pending.push(p.enqueue(&dest, m).await.unwrap());
    }
    for c in pending {
        c.await.unwrap();
    }
    start.elapsed()
}

async fn mailroom_consume(b: &KafkaBackend, topic: &str, n: usize) -> ConsumeTiming {
    let mut c = b.consumer(topic, ConsumerOptions::default()).await.unwrap();
    let mut clock = ConsumeClock::start();
    for _ in 0..n {
        c.receive().await.unwrap().ack().await.unwrap();
        clock.settled();
    }
    let timing = clock.stop();
    c.close().await.unwrap();
    timing
}

/// A consume run's timing: the whole run, and the part after the group join (first message).
#[derive(Clone, Copy)]
struct ConsumeTiming {
    total: Duration,
    join: Duration,
}

struct ConsumeClock {
    start: Instant,
    first: Option<Instant>,
}

impl ConsumeClock {
    fn start() -> Self {
        ConsumeClock {
            start: Instant::now(),
            first: None,
        }
    }

    fn settled(&mut self) {
        self.first.get_or_insert_with(Instant::now);
    }

    fn stop(self) -> ConsumeTiming {
        let total = self.start.elapsed();
        let join = self.first.map_or(total, |f| f - self.start);
        ConsumeTiming { total, join }
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("MAILROOM_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let b = KafkaBackend::from_url(&url()).await.unwrap();
    let bootstrap = b.config().bootstrap_servers();
    let payload = vec![0x5au8; SIZE];
    let (raw_t, mr_t) = (fresh("raw"), fresh("mailroom"));
    for t in [&raw_t, &mr_t] {
        b.topology()
            .declare_queue(&QueueSpec::new(t.as_str()))
            .await
            .unwrap();
    }
    // Alternate who goes first so a warming broker favours neither.
    let raw_p = raw_produce(b.config(), &raw_t, n, &payload).await;
    let mr_p = mailroom_produce(&b, &mr_t, n, &payload).await;
    let mr_c = mailroom_consume(&b, &mr_t, n).await;
    let raw_c = raw_consume(b.config(), &raw_t, n).await;

    println!("kafka backend vs raw rdkafka, {n} x {SIZE} B, broker {bootstrap}");
    // The group join (subscribe to first message) is the broker's rebalance, not consumption;
    // "after join" rates count the n - 1 messages after the first.
    let steady = |t: ConsumeTiming| (t.total - t.join) * n as u32 / (n as u32 - 1).max(1);
    println!(
        "  join     raw rdkafka {:>8.2?}   mailroom {:>8.2?}",
        raw_c.join, mr_c.join
    );
    for (what, raw, mr) in [
        ("produce", raw_p, mr_p),
        ("consume", raw_c.total, mr_c.total),
        ("after join", steady(raw_c), steady(mr_c)),
    ] {
        let (r, m) = (rate(n, raw), rate(n, mr));
        println!(
            "  {what:<10} raw rdkafka {r:>10.0} msg/s   mailroom {m:>10.0} msg/s   ratio {:.2}",
            m / r
        );
    }
    for t in [&raw_t, &mr_t] {
        let _ = b.topology().delete_queue(t.as_str()).await;
    }
    let _ = b.close().await;
}
