//! `mailroom consume`: receive, print and ack messages from a queue.

use std::time::Duration;

use clap::Args;
use mailroom::{ConsumerOptions, QueueSpec, Result};

use crate::positive_duration;

/// The `consume` subcommand's arguments.
#[derive(Args)]
pub(crate) struct ConsumeArgs {
    /// Broker URL.
    #[arg(long, default_value = "memory://")]
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
}

/// Run `mailroom consume`.
pub(crate) async fn run(args: ConsumeArgs) -> Result<()> {
    let ConsumeArgs {
        url,
        queue,
        count,
        idle,
        first_wait,
        declare,
    } = args;
    let backend = mailroom::connect(&url).await?;
    if declare {
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&queue))
            .await?;
    }
    let idle = positive_duration(idle, "idle")?;
    let first_wait = positive_duration(first_wait, "first-wait")?.max(idle);
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
        let m = delivery.message();
        println!(
            "{} attempt={} key={:?} headers={:?} payload={}",
            m.id(),
            delivery.attempt(),
            m.key(),
            m.headers(),
            String::from_utf8_lossy(m.payload())
        );
        delivery.ack().await?;
        received += 1;
    }
    consumer.close().await?;
    eprintln!("{received} message(s) received and acked from {queue}");
    Ok(())
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
