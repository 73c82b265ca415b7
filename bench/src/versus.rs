//! Client against client: a mailroom backend and the raw client it is built on, on the same
//! broker in one process, closed loop. Each side publishes `n` messages with every confirm
//! awaited, then consumes them with an ack each. What `cargo bench --bench vs_lapin`,
//! `vs_rdkafka` and `vs_sdk` print (`bench/benches/`).
//!
//! Both sides are the harness's drivers: the backend through [`crate::driver::MailroomDriver`], the raw client
//! through its baseline in [`crate::raw`] (raw lapin, rdkafka, aws-sdk-sqs, configured from the
//! same URL as the backend configures itself). So the raw clients are written once, for the
//! open-loop harness and for these closed-loop rounds alike.
//!
//! What each figure measures:
//!
//! * **publish+confirm**: `n` messages sent with every confirm awaited (while sending, so a
//!   client whose window is given back by confirms keeps going), once a warm-up message is
//!   confirmed: the client's start-up (connection, a Kafka producer's id, topic metadata) is
//!   not in it.
//! * **consume+ack**: the `n` messages after the first, each settled (an ack; on Kafka its offset
//!   stored for the commit) before the next is asked for, from the first message's arrival to the
//!   last ack. The backlog is already on the broker, so this is how fast a consumer drains it.
//! * **first message after**: opening the consumer to the first message: a Kafka consumer
//!   group's join (the broker's rebalance), a long poll's first round trip. It is the same
//!   broker work on both sides and does not depend on `n`, so it is shown apart, in
//!   milliseconds, instead of diluting the consume rate by an amount that depends on the round
//!   size.
//! * **CPU per message**: the process's CPU time (every thread: the client library's own
//!   threads too) during the publish and the consume, per message. On a busy machine the
//!   wall-clock rates move with other load; CPU time per message moves much less, and it is
//!   what the abstraction costs.
//!
//! A first round on each side warms the broker and both clients and is not counted; the rounds
//! after it alternate which side goes first, so neither always runs on a warmer broker. Each
//! figure is printed as the median over the rounds with its range, and the ratio as the median
//! of the rounds' mailroom / raw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};

use mailroom_core::{Error, ErrorKind, Result};

use crate::driver::{now_us, Driver, Outgoing, TopicPlan};
use crate::raw;

/// How long a consumer waits for each message before the round fails.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// One side's figures in one round.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    /// Publish with every confirm awaited, in messages per second (after a warm-up message).
    pub publish: f64,
    /// Consume with an ack each, in messages per second, from the first message's arrival to
    /// the last ack.
    pub consume: f64,
    /// Opening the consumer to its first message (a consumer group's join, a first poll).
    pub first_message: Duration,
    /// Process CPU time per published message, in microseconds (`None` without Linux's
    /// per-thread schedstat).
    pub publish_cpu_us: Option<f64>,
    /// Process CPU time per consumed message, in microseconds.
    pub consume_cpu_us: Option<f64>,
}

/// The rounds of one comparison: for each, (raw, mailroom).
#[derive(Debug, Clone)]
pub struct Versus {
    /// The raw driver's label (`raw-lapin`, ...).
    pub raw: String,
    /// The backend's label (`rabbitmq`, ...).
    pub mailroom: String,
    /// Messages per round and side.
    pub messages: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// The counted rounds, (raw, mailroom) each.
    pub rounds: Vec<(Rates, Rates)>,
}

/// Median, minimum and maximum of a figure over the rounds.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    match values.as_slice() {
        [] => (0.0, 0.0, 0.0),
        [first, .., last] => (values[values.len() / 2], *first, *last),
        [only] => (*only, *only, *only),
    }
}

/// How a figure is read: from a side's rates, and its unit.
type Pick = fn(&Rates) -> Option<f64>;

impl Versus {
    /// The report: per figure, each side's median [min - max] and the median of the rounds'
    /// mailroom / raw ratios. Rates are "higher is better"; the first-message time and the CPU
    /// per message are "lower is better", and their ratio is still mailroom / raw.
    pub fn lines(&self) -> Vec<String> {
        let figures: [(&str, &str, Pick); 5] = [
            ("publish+confirm", "msg/s", |r| Some(r.publish)),
            ("consume+ack", "msg/s", |r| Some(r.consume)),
            ("first message", "ms", |r| {
                Some(r.first_message.as_secs_f64() * 1e3)
            }),
            ("publish CPU", "us/msg", |r| r.publish_cpu_us),
            ("consume CPU", "us/msg", |r| r.consume_cpu_us),
        ];
        let mut lines = vec![format!(
            "{} vs {}: {} x {} B, {} rounds (median [min - max]; ratio = median of the rounds' \
             mailroom / raw; rates higher is better, ms and CPU us/msg lower is better)",
            self.mailroom,
            self.raw,
            self.messages,
            self.size,
            self.rounds.len()
        )];
        for (what, unit, pick) in figures {
            let pairs: Vec<(f64, f64)> = self
                .rounds
                .iter()
                .filter_map(|(r, m)| pick(r).zip(pick(m)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let (raw, raw_lo, raw_hi) = spread(pairs.iter().map(|(r, _)| *r).collect());
            let (mr, mr_lo, mr_hi) = spread(pairs.iter().map(|(_, m)| *m).collect());
            let (ratio, ratio_lo, ratio_hi) = spread(
                pairs
                    .iter()
                    .map(|(r, m)| m / r.max(f64::MIN_POSITIVE))
                    .collect(),
            );
            let digits = if unit == "msg/s" { 0 } else { 2 };
            lines.push(format!(
                "  {what:<16} {} {raw:>9.digits$} [{raw_lo:.digits$} - {raw_hi:.digits$}] {unit}   \
                 mailroom {mr:>9.digits$} [{mr_lo:.digits$} - {mr_hi:.digits$}] {unit}   ratio \
                 {ratio:.2} [{ratio_lo:.2} - {ratio_hi:.2}]",
                self.raw
            ));
        }
        lines
    }
}

fn fresh(what: &str) -> String {
    let id = mailroom_core::MessageId::generate().to_string();
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("mr-bench-{what}-{id}")
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

/// CPU time of this process's threads, summed (Linux schedstat, in nanoseconds).
///
/// The threads are listed when the clock starts (listing a directory allocates a 32 KiB
/// buffer, and glibc consolidates its free lists first: done inside the measured span, that
/// alone cost tens of milliseconds after a publish round) and read again when it stops; a
/// thread that ends meanwhile takes its share with it, which is why the clients are opened
/// before and closed after what is measured.
struct CpuClock {
    tasks: Vec<std::path::PathBuf>,
    start: u64,
}

impl CpuClock {
    /// `None` where there is no per-thread schedstat.
    fn start() -> Option<Self> {
        let tasks: Vec<_> = std::fs::read_dir("/proc/self/task")
            .ok()?
            .flatten()
            .map(|task| task.path().join("schedstat"))
            .collect();
        let mut clock = CpuClock { tasks, start: 0 };
        clock.start = clock.read()?;
        Some(clock)
    }

    fn read(&self) -> Option<u64> {
        let mut total = 0u64;
        let mut read_any = false;
        for path in &self.tasks {
            // A thread that ended is skipped, not an error.
            let Ok(stat) = std::fs::read_to_string(path) else {
                continue;
            };
            if let Some(ns) = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += ns;
                read_any = true;
            }
        }
        read_any.then_some(total)
    }

    /// CPU microseconds per message since the start.
    fn per_message(&self, n: usize) -> Option<f64> {
        let now = self.read()?;
        Some(now.saturating_sub(self.start) as f64 / 1e3 / n.max(1) as f64)
    }
}

/// One round on one side, on a fresh topic with one subscription (a queue), deleted after.
pub async fn round(driver: &dyn Driver, n: usize, size: usize) -> Result<Rates> {
    let name = fresh(&driver.name());
    let topic = TopicPlan {
        subscriptions: vec![name.clone()],
        name,
        partitions: 1,
    };
    driver.create(&topic).await?;
    let rates = measure(driver, &topic, n, size).await;
    // The topic goes either way; a failed round's error is the one worth reporting.
    let deleted = driver.delete(&topic).await;
    let rates = rates?;
    deleted?;
    Ok(rates)
}

async fn measure(driver: &dyn Driver, topic: &TopicPlan, n: usize, size: usize) -> Result<Rates> {
    let payload = Bytes::from(vec![b'x'; size]);
    let message = || Outgoing {
        key: None,
        payload: payload.clone(),
        intended_us: now_us(),
    };
    let producer = driver.producer(topic).await?;
    producer.send(message()).await?.await?;
    let cpu = CpuClock::start();
    let start = Instant::now();
    // Confirms are awaited as they come, while sending: a client whose window slot is given
    // back by its confirm (raw lapin's) would otherwise wait forever once the window is full.
    let mut confirms = FuturesUnordered::new();
    for _ in 0..n {
        let send = producer.send(message());
        tokio::pin!(send);
        let confirm = loop {
            tokio::select! {
                biased;
                sent = &mut send => break sent?,
                Some(confirmed) = confirms.next(), if !confirms.is_empty() => confirmed?,
            }
        };
        confirms.push(confirm);
    }
    while let Some(confirmed) = confirms.next().await {
        confirmed?;
    }
    let publish = rate(n, start.elapsed());
    let publish_cpu_us = cpu.and_then(|c| c.per_message(n));
    producer.close().await?;
    // The producer's client (and its threads) go before the consumer is measured.
    drop(producer);

    let mut consumer = driver.consumer(topic, &topic.subscriptions[0]).await?;
    let opened = Instant::now();
    let mut first = None;
    for received in 0..=n {
        // As the harness does, on both sides alike: what is already there is taken through the
        // driver's synchronous path (mailroom: try_receive + try_ack; raw rdkafka: recv taken
        // without waiting), and only an empty consumer is awaited.
        let incoming = match consumer.try_receive()? {
            Some(incoming) => Some(incoming),
            None => consumer.receive(RECEIVE_TIMEOUT).await?,
        };
        if incoming.is_none() {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{}: message {received} of {} did not arrive within {RECEIVE_TIMEOUT:?}",
                    driver.name(),
                    n + 1
                ),
            ));
        }
        if first.is_none() {
            let cpu = CpuClock::start();
            first = Some((Instant::now(), cpu));
        }
    }
    // The clock stops at the last ack: closing (a Kafka consumer's final commit and leaving its
    // group) is not consumption, on either side.
    let end = Instant::now();
    let (first_at, cpu) = first.unwrap_or((end, None));
    let consume_cpu_us = cpu.and_then(|c| c.per_message(n));
    consumer.close().await?;
    Ok(Rates {
        publish,
        consume: rate(n, end - first_at),
        first_message: first_at - opened,
        publish_cpu_us,
        consume_cpu_us,
    })
}

/// A warm-up round, then `rounds` counted rounds of `n` messages of `size` bytes on the backend
/// for `url` and on its raw baseline. `Unsupported` if this build has no baseline for the URL.
pub async fn compare(url: &str, n: usize, size: usize, rounds: usize) -> Result<Versus> {
    let raw: Arc<dyn Driver> = raw::baseline_for(url).await?.ok_or_else(|| {
        Error::unsupported(format!(
            "no raw baseline for {} in this build (see the broker features)",
            mailroom_core::url::redact(url)
        ))
    })?;
    let mailroom = raw::driver_for(url).await?;
    round(raw.as_ref(), n, size).await?;
    round(mailroom.as_ref(), n, size).await?;
    let mut counted = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let (raw_rates, mailroom_rates) = if r % 2 == 0 {
            let raw_rates = round(raw.as_ref(), n, size).await?;
            (raw_rates, round(mailroom.as_ref(), n, size).await?)
        } else {
            let mailroom_rates = round(mailroom.as_ref(), n, size).await?;
            (round(raw.as_ref(), n, size).await?, mailroom_rates)
        };
        counted.push((raw_rates, mailroom_rates));
    }
    Ok(Versus {
        raw: raw.name(),
        mailroom: mailroom.name(),
        messages: n,
        size,
        rounds: counted,
    })
}

/// `MAILROOM_BENCH_N` and `MAILROOM_BENCH_ROUNDS`, or the defaults given: what the `vs_*`
/// benches read so that scripts/test.sh can run them small.
pub fn size_from_env(default_n: usize, default_rounds: usize) -> (usize, usize) {
    (
        env_or("MAILROOM_BENCH_N", default_n).max(1),
        env_or("MAILROOM_BENCH_ROUNDS", default_rounds).max(1),
    )
}

/// The environment variable `name` parsed as a `T`, or `default` when it is unset or unreadable
/// (the benches and examples take their sizes this way).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
