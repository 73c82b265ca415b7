//! `mailroom produce`: send messages to a queue or an exchange.

use clap::Args;
use mailroom::{Destination, Message, QueueSpec, Result};

/// The `produce` subcommand's arguments.
#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// Broker URL.
    #[arg(long, default_value = "memory://")]
    url: String,
    /// `queue`, or `exchange:routing.key`.
    #[arg(long)]
    to: String,
    /// The payload text (default: a numbered line per message).
    #[arg(long)]
    message: Option<String>,
    /// How many messages.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Ordering / partitioning key.
    #[arg(long)]
    key: Option<String>,
    /// Headers as name=value (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Declare the queue first (for `--to QUEUE`).
    #[arg(long)]
    declare: bool,
}

/// Run `mailroom produce`.
pub(crate) async fn run(args: ProduceArgs) -> Result<()> {
    let ProduceArgs {
        url,
        to,
        message,
        count,
        key,
        headers,
        declare,
    } = args;
    let backend = mailroom::connect(&url).await?;
    let dest = Destination::parse(&to)?;
    if let (true, Destination::Queue(q)) = (declare, &dest) {
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&**q))
            .await?;
    }
    let producer = backend.producer().await?;
    let mut pending = Vec::new();
    for i in 0..count {
        let text = message.clone().unwrap_or_else(|| format!("message {i}"));
        let mut builder = Message::builder(text);
        if let Some(k) = &key {
            builder = builder.key(k);
        }
        for h in &headers {
            let (name, value) = h.split_once('=').ok_or_else(|| {
                mailroom::Error::config(format!("--header {h:?} must be NAME=VALUE"))
            })?;
            builder = builder.header(name, value);
        }
        pending.push(producer.enqueue(&dest, builder.build()?).await?);
    }
    let mut confirmed = 0;
    for p in pending {
        p.await?;
        confirmed += 1;
    }
    producer.close().await?;
    println!("{confirmed} message(s) confirmed by {url} for {dest}");
    Ok(())
}
