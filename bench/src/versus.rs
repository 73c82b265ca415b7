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
//! A first round warms the broker and both clients and is not counted; the rounds after it
//! alternate which side goes first, so neither always runs on a warmer broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};

use mailroom_core::{Error, ErrorKind, Result};

use crate::driver::{now_us, Driver, Outgoing, TopicPlan};
use crate::raw;

/// How long a consumer waits for each message before the round fails.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// One side's rates in one round, in messages per second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    /// Publish with every confirm awaited (the clock starts once a first, warm-up message is
    /// confirmed, so the client's start-up is left out).
    pub publish: f64,
    /// Consume with an ack each, from opening the consumer to the last ack.
    pub consume: f64,
    /// The same after the first message arrived: without the subscription's start (a Kafka
    /// consumer group's join, a long poll's first round trip).
    pub after_first: f64,
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

impl Versus {
    /// The report: per figure, each side's median [min - max] and the median of the rounds'
    /// mailroom / raw ratios.
    pub fn lines(&self) -> Vec<String> {
        type Pick = fn(&Rates) -> f64;
        let figures: [(&str, Pick); 3] = [
            ("publish+confirm", |r| r.publish),
            ("consume+ack", |r| r.consume),
            ("after first", |r| r.after_first),
        ];
        let mut lines = vec![format!(
            "{} vs {}: {} x {} B, {} rounds (median [min - max]; ratio = median of the rounds' \
             mailroom / raw)",
            self.mailroom,
            self.raw,
            self.messages,
            self.size,
            self.rounds.len()
        )];
        for (what, pick) in figures {
            let (raw, raw_lo, raw_hi) = spread(self.rounds.iter().map(|(r, _)| pick(r)).collect());
            let (mr, mr_lo, mr_hi) = spread(self.rounds.iter().map(|(_, m)| pick(m)).collect());
            let (ratio, ratio_lo, ratio_hi) =
                spread(self.rounds.iter().map(|(r, m)| pick(m) / pick(r)).collect());
            lines.push(format!(
                "  {what:<16} {} {raw:>9.0} [{raw_lo:.0} - {raw_hi:.0}] msg/s   mailroom \
                 {mr:>9.0} [{mr_lo:.0} - {mr_hi:.0}] msg/s   ratio {ratio:.2} [{ratio_lo:.2} - \
                 {ratio_hi:.2}]",
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
    producer.close().await?;

    let mut consumer = driver.consumer(topic, &topic.subscriptions[0]).await?;
    let start = Instant::now();
    let mut first = None;
    for received in 0..=n {
        if consumer.receive(RECEIVE_TIMEOUT).await?.is_none() {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{}: message {received} of {} did not arrive within {RECEIVE_TIMEOUT:?}",
                    driver.name(),
                    n + 1
                ),
            ));
        }
        first.get_or_insert_with(Instant::now);
    }
    // The clock stops at the last ack: closing (a Kafka consumer's final commit and leaving its
    // group) is not consumption, on either side.
    let total = start.elapsed();
    consumer.close().await?;
    let after_first = first.map_or(total, |f| total.saturating_sub(f - start));
    Ok(Rates {
        publish,
        consume: rate(n + 1, total),
        after_first: rate(n, after_first),
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
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        env("MAILROOM_BENCH_N", default_n).max(1),
        env("MAILROOM_BENCH_ROUNDS", default_rounds).max(1),
    )
}
