//! `mailroom consume`: receive, print and ack messages from a queue.

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, ValueEnum};
use mailroom::{ConsumerOptions, QueueSpec, Result};

use crate::{connect_broker, jsonl, positive_duration, Failure};

/// How each received message is printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One line per message for a person: strings quoted and escaped (a newline prints as
    /// `\n`), a payload that is not UTF-8 as `payload(base64)=...`.
    Human,
    /// One JSON object per line (what `produce --from-json` reads): id, timestamp, key,
    /// headers, payload (base64 with `"encoding":"base64"` when not UTF-8), source, attempt,
    /// redelivered, and partition / offset where the broker has them.
    Json,
}

/// The `consume` subcommand's arguments.
#[derive(Args)]
pub(crate) struct ConsumeArgs {
    /// Broker URL (amqp://, kafka://, sqs://). There is no default, and memory:// is refused:
    /// it lives inside one process, so another command's messages are never there.
    #[arg(long)]
    url: String,
    /// The queue.
    #[arg(long)]
    queue: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when nothing arrives for this many seconds.
    #[arg(long, default_value_t = 5.0)]
    idle: f64,
    /// Wait this many seconds for the first message (a Kafka consumer must first be given
    /// partitions by its group; while waiting, what it waits for is printed).
    #[arg(long, default_value_t = 30.0)]
    first_wait: f64,
    /// Declare the queue first.
    #[arg(long)]
    declare: bool,
    /// How each message is printed on stdout (counts and notices go to stderr). A message is
    /// acked once its line is written: `consume | produce` moves messages, and those acked
    /// but not yet confirmed by `produce` when it fails are lost from the source.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// Run `mailroom consume`.
pub(crate) async fn run(args: ConsumeArgs) -> std::result::Result<(), Failure> {
    let ConsumeArgs {
        url,
        queue,
        count,
        idle,
        first_wait,
        declare,
        format,
    } = args;
    let idle = positive_duration(idle, "idle")?;
    let first_wait = positive_duration(first_wait, "first-wait")?.max(idle);
    let backend = connect_broker(&url, "consume").await?;
    if declare {
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&queue))
            .await?;
    }
    let mut consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
    let mut received = 0u64;
    while count.is_none_or(|c| received < c) {
        let next = if received == 0 {
            first_delivery(consumer.as_mut(), first_wait, backend.name(), &queue).await?
        } else {
            consumer.receive_timeout(idle).await?
        };
        let Some(delivery) = next else {
            break;
        };
        let line = match format {
            Format::Human => human_line(&delivery),
            Format::Json => jsonl::to_line(delivery.message(), delivery.info()),
        };
        // Acked only once its line is out: a closed pipe leaves the message on the broker (the
        // dropped delivery is redelivered).
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| {
                Failure::Runtime(format!(
                    "writing to stdout: {e} ({received} message(s) printed and acked before)"
                ))
            })?;
        drop(out);
        delivery.ack().await?;
        received += 1;
    }
    consumer.close().await?;
    eprintln!("{received} message(s) received and acked from {queue}");
    Ok(())
}

/// One delivery for a person, on one line whatever the payload holds: every string is quoted and
/// escaped as a Rust string literal, so a newline in a payload, key or header cannot start what
/// looks like another message, and a payload that is not UTF-8 is shown as base64 and labelled.
fn human_line(delivery: &mailroom::Delivery) -> String {
    use std::fmt::Write as _;
    let m = delivery.message();
    let info = delivery.info();
    let mut line = format!("id={:?} attempt={}", m.id().to_string(), info.attempt);
    if let Some(p) = info.partition {
        let _ = write!(line, " partition={p}");
    }
    if let Some(o) = info.offset {
        let _ = write!(line, " offset={o}");
    }
    match (m.key(), m.key_bytes()) {
        (Some(k), _) => {
            let _ = write!(line, " key={k:?}");
        }
        (None, Some(bytes)) => {
            let (b64, _) = jsonl::payload_text(bytes);
            let _ = write!(line, " key(base64)={b64}");
        }
        (None, None) => line.push_str(" key=-"),
    }
    if let Some(t) = m.timestamp() {
        let _ = write!(line, " timestamp_ms={}", t.as_millis());
    }
    let _ = write!(line, " headers={:?}", m.headers());
    match jsonl::payload_text(m.payload()) {
        (text, None) => {
            let _ = write!(line, " payload={text:?}");
        }
        (b64, Some(encoding)) => {
            let _ = write!(line, " payload({encoding})={b64}");
        }
    }
    line
}

/// How often `consume` says what it is still waiting for.
const WAITING_NOTICE_EVERY: Duration = Duration::from_secs(5);

/// The first delivery, waiting up to `wait` and saying every few seconds why nothing came yet:
/// a new Kafka group member receives nothing until the group has given it partitions, and a
/// crashed member's partitions only once its session timeout has passed.
async fn first_delivery(
    consumer: &mut dyn mailroom::Consumer,
    wait: Duration,
    backend: &str,
    queue: &str,
) -> Result<Option<mailroom::Delivery>> {
    let started = std::time::Instant::now();
    loop {
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            eprintln!(
                "nothing arrived from {queue} within {:.0} s",
                wait.as_secs_f64()
            );
            return Ok(None);
        }
        if let Some(d) = consumer
            .receive_timeout(left.min(WAITING_NOTICE_EVERY))
            .await?
        {
            return Ok(Some(d));
        }
        let why = match backend {
            "kafka" => {
                "the consumer group gives this member partitions only after a rebalance; the \
                 partitions of a member that crashed come back once its session timeout (10 s \
                 unless ?session.timeout.ms= says otherwise) has passed, or at once for a \
                 restarted ?group.instance.id="
            }
            _ => "the queue may be empty",
        };
        eprintln!(
            "waiting for the first message from {queue} ({:.0} s of {:.0} s): {why}",
            started.elapsed().as_secs_f64(),
            wait.as_secs_f64()
        );
    }
}
