//! mailroom-kafka vs raw rdkafka on the same broker, in one process: 1 KiB messages, produce
//! with every delivery report awaited (after one warm-up record per producer, on both sides),
//! then consume with offsets stored per message and
//! committed (auto-commit of stored offsets, plus a final synchronous commit). Raw rdkafka uses
//! the backend's own librdkafka properties.
//!
//! The raw producer writes the same record shape mailroom writes (key, payload, an id and a
//! millisecond timestamp header), so the broker stores and serves the same bytes for both and
//! the ratio measures the client side only.
//!
//! A warm-up round, then `MAILROOM_BENCH_ROUNDS` (5) rounds on fresh topics, alternating which
//! side goes first; medians and ranges are printed.
//!
//! `cargo bench -p mailroom-kafka --bench vs_rdkafka` (env `MAILROOM_KAFKA_URL`,
//! `MAILROOM_BENCH_N`, default 10,000, `MAILROOM_BENCH_ROUNDS`).

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

/// The raw side's record: the same shape mailroom writes (key, payload, id and timestamp headers).
fn raw_record<'a>(
    topic: &'a str,
    key: &'a str,
    payload: &'a [u8],
    id: &'a str,
    millis: &'a str,
) -> FutureRecord<'a, str, [u8]> {
    let headers = OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: ID_HEADER,
            value: Some(id),
        })
        .insert(Header {
            key: TIMESTAMP_HEADER,
            value: Some(millis),
        });
    FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers)
}

fn now_millis() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string()
}

/// Sends `n + 1` records; the clock runs over the last `n`, once the first is confirmed (so the
/// client's start-up, its connection, producer id and topic metadata, is left out of both sides).
async fn raw_produce(config: &KafkaConfig, topic: &str, n: usize, payload: &[u8]) -> Duration {
    // The backend's own properties, so both sides produce alike.
    let p: FutureProducer = config.producer_client_config().create().unwrap();
    let (id, millis) = (uuid::Uuid::new_v4().to_string(), now_millis());
    p.send_result(raw_record(topic, "warm", payload, &id, &millis))
        .map_err(|(e, _)| e)
        .unwrap()
        .await
        .unwrap()
        .map_err(|(e, _)| e)
        .unwrap();
    let start = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let key = (i % 64).to_string();
        let (id, millis) = (uuid::Uuid::new_v4().to_string(), now_millis());
        let record = raw_record(topic, &key, payload, &id, &millis);
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
    for _ in 0..=n {
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
    let warm = Message::builder(payload.clone())
        .key("warm")
        .build()
        .unwrap();
    p.send(&dest, warm).await.unwrap();
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
    for _ in 0..=n {
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

/// One round's rates (msg/s) for one side: produce, consume (join included), after the join.
#[derive(Clone, Copy, Default)]
struct Rates {
    produce: f64,
    consume: f64,
    steady: f64,
}

fn rates(n: usize, produce: Duration, consume: ConsumeTiming) -> Rates {
    // The group join (subscribe to first message) is the broker's rebalance, not consumption;
    // the steady rate counts the n messages after the first (the warm-up record).
    Rates {
        produce: rate(n, produce),
        consume: rate(n + 1, consume.total),
        steady: rate(n, consume.total - consume.join),
    }
}

async fn round(b: &KafkaBackend, n: usize, payload: &[u8], raw_first: bool) -> (Rates, Rates) {
    let (raw_t, mr_t) = (fresh("raw"), fresh("mailroom"));
    for t in [&raw_t, &mr_t] {
        b.topology()
            .declare_queue(&QueueSpec::new(t.as_str()))
            .await
            .unwrap();
    }
    let (raw_p, mr_p, raw_c, mr_c);
    if raw_first {
        raw_p = raw_produce(b.config(), &raw_t, n, payload).await;
        mr_p = mailroom_produce(b, &mr_t, n, payload).await;
        raw_c = raw_consume(b.config(), &raw_t, n).await;
        mr_c = mailroom_consume(b, &mr_t, n).await;
    } else {
        mr_p = mailroom_produce(b, &mr_t, n, payload).await;
        raw_p = raw_produce(b.config(), &raw_t, n, payload).await;
        mr_c = mailroom_consume(b, &mr_t, n).await;
        raw_c = raw_consume(b.config(), &raw_t, n).await;
    }
    for t in [&raw_t, &mr_t] {
        let _ = b.topology().delete_queue(t.as_str()).await;
    }
    (rates(n, raw_p, raw_c), rates(n, mr_p, mr_c))
}

/// Median and range of a figure over the rounds.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("MAILROOM_BENCH_N", 10_000);
    let rounds = env("MAILROOM_BENCH_ROUNDS", 5).max(1);
    let b = KafkaBackend::from_url(&url()).await.unwrap();
    let bootstrap = b.config().bootstrap_servers();
    let payload = vec![0x5au8; SIZE];
    // A first round warms the broker (connections, the idempotent producer's id, the group
    // coordinator) and is not counted; then the order alternates so neither side always goes
    // first on a warmer broker.
    round(&b, n, &payload, true).await;
    let mut all = Vec::new();
    for r in 0..rounds {
        all.push(round(&b, n, &payload, r % 2 == 1).await);
    }
    println!(
        "kafka backend vs raw rdkafka, {n} x {SIZE} B, broker {bootstrap}, {rounds} rounds \
         (median, [min - max]; ratio = median of the rounds' mailroom / raw)"
    );
    type Pick = fn(&Rates) -> f64;
    let figures: [(&str, Pick); 3] = [
        ("produce", |r| r.produce),
        ("consume", |r| r.consume),
        ("after join", |r| r.steady),
    ];
    for (what, pick) in figures {
        let (raw, raw_lo, raw_hi) = spread(all.iter().map(|(raw, _)| pick(raw)).collect());
        let (mr, mr_lo, mr_hi) = spread(all.iter().map(|(_, mr)| pick(mr)).collect());
        let (ratio, ratio_lo, ratio_hi) =
            spread(all.iter().map(|(raw, mr)| pick(mr) / pick(raw)).collect());
        println!(
            "  {what:<10} raw rdkafka {raw:>9.0} [{raw_lo:.0} - {raw_hi:.0}] msg/s   mailroom \
             {mr:>9.0} [{mr_lo:.0} - {mr_hi:.0}] msg/s   ratio {ratio:.2} [{ratio_lo:.2} - {ratio_hi:.2}]"
        );
    }
    let _ = b.close().await;
}
