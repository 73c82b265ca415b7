//! The child processes of the process-kill scenario: the test binary run again with its role
//! in the environment, printing one line per message it can vouch for.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use mailroom_core::{ConsumerOptions, Destination, Message};

use super::Connect;

pub(crate) const ROLE: &str = "MAILROOM_KILL_ROLE";
pub(crate) const URL: &str = "MAILROOM_KILL_URL";
pub(crate) const QUEUE: &str = "MAILROOM_KILL_QUEUE";
pub(crate) const BATCH: &str = "MAILROOM_KILL_BATCH";
pub(crate) const PREFIX: &str = "MAILROOM_KILL_PREFIX";

/// A consumer child's line: printed (and flushed) before its message is acked.
pub(crate) const RECEIVED: &str = "received ";
/// A producer child's line: printed once its message's confirm arrived.
pub(crate) const CONFIRMED: &str = "confirmed ";

/// How long a consumer child holds a printed batch before acking it, so that a kill lands
/// between the print and the ack (mid-batch) rather than between batches.
const HOLD_BEFORE_ACK: Duration = Duration::from_millis(200);
/// How many confirms a producer child keeps outstanding, so that a kill finds some unconfirmed.
const IN_FLIGHT: usize = 64;
/// A consumer child with nothing to do for this long exits on its own.
const IDLE_EXIT: Duration = Duration::from_secs(60);

/// This process's role, when the scenario started it as a child.
pub(crate) enum Role {
    Consume {
        url: String,
        queue: String,
        batch: u32,
    },
    Produce {
        url: String,
        queue: String,
        prefix: String,
    },
}

impl Role {
    pub(crate) fn from_env() -> Option<Role> {
        let role = std::env::var(ROLE).ok()?;
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Some(match role.as_str() {
            "produce" => Role::Produce {
                url: var(URL),
                queue: var(QUEUE),
                prefix: var(PREFIX),
            },
            _ => Role::Consume {
                url: var(URL),
                queue: var(QUEUE),
                batch: var(BATCH).parse().unwrap_or(50),
            },
        })
    }

    pub(crate) async fn run(self, connect: &Connect) -> ExitCode {
        let outcome = match self {
            Role::Consume { url, queue, batch } => consume(connect, &url, &queue, batch).await,
            Role::Produce { url, queue, prefix } => produce(connect, &url, &queue, &prefix).await,
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("process-kill child: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

fn say(prefix: &str, payload: &str) -> mailroom_core::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{prefix}{payload}")
        .and_then(|()| out.flush())
        .map_err(|e| crate::check_failed(format!("writing to stdout: {e}")))
}

/// Receive in batches: print every message of a batch, hold, then ack them all.
async fn consume(
    connect: &Connect,
    url: &str,
    queue: &str,
    batch: u32,
) -> mailroom_core::Result<()> {
    let backend = connect(url.to_owned()).await?;
    let options = ConsumerOptions::default().prefetch(batch);
    let mut consumer = backend.consumer(queue, options).await?;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let mut held = Vec::new();
        while held.len() < batch as usize {
            let wait = if held.is_empty() {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100)
            };
            match consumer.receive_timeout(wait).await? {
                Some(d) => held.push(d),
                None => break,
            }
        }
        if held.is_empty() {
            if idle_since.elapsed() > IDLE_EXIT {
                return Ok(());
            }
            continue;
        }
        idle_since = tokio::time::Instant::now();
        for d in &held {
            say(RECEIVED, &String::from_utf8_lossy(d.message().payload()))?;
        }
        tokio::time::sleep(HOLD_BEFORE_ACK).await;
        for d in held {
            d.ack().await?;
        }
    }
}

/// Send numbered messages without end, `IN_FLIGHT` confirms outstanding, printing each
/// confirmed one in order.
async fn produce(
    connect: &Connect,
    url: &str,
    queue: &str,
    prefix: &str,
) -> mailroom_core::Result<()> {
    let backend = connect(url.to_owned()).await?;
    let producer = backend.producer().await?;
    let dest = Destination::queue(queue);
    let mut pending = std::collections::VecDeque::new();
    for n in 0u64.. {
        let payload = format!("{prefix}{n}");
        let confirm = producer
            .enqueue(&dest, Message::new(payload.clone()))
            .await?;
        pending.push_back((payload, confirm));
        while pending.len() > IN_FLIGHT {
            if let Some((payload, confirm)) = pending.pop_front() {
                confirm.await?;
                say(CONFIRMED, &payload)?;
            }
        }
    }
    Ok(())
}
