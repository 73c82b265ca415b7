//! The `mailroom` command: produce, consume and benchmark against any broker URL.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mailroom::bench::{self, BenchConfig};
use mailroom::{ConsumerOptions, Destination, Message, QueueSpec, Result};

#[derive(Parser)]
#[command(
    name = "mailroom",
    version,
    about = "One set of traits over many message brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput and latency of one producer and one consumer (default: memory://, compared
    /// with a raw tokio mpsc channel doing the same work).
    Bench {
        /// Broker URL.
        #[arg(long, default_value = "memory://")]
        url: String,
        /// Messages in the throughput run.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Paced rate of the latency run (messages per second).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Length of the latency run in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Throughput rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Send messages to a queue or an exchange.
    Produce {
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
    },
    /// Receive, print and ack messages from a queue.
    Consume {
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
        /// Declare the queue first.
        #[arg(long)]
        declare: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAILROOM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn positive_duration(seconds: f64, flag: &str) -> Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(mailroom::Error::config(format!(
            "--{flag} must be a positive number of seconds, got {seconds}"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Bench {
            url,
            messages,
            size,
            rate,
            seconds,
            rounds,
        } => {
            if messages == 0 || rate == 0 || rounds == 0 {
                return Err(mailroom::Error::config(
                    "--messages, --rate and --rounds must be at least 1",
                ));
            }
            let config = BenchConfig {
                messages,
                payload_size: size,
                latency_rate: rate,
                latency_duration: positive_duration(seconds, "seconds")?,
                ..BenchConfig::default()
            };
            run_bench(&url, &config, rounds).await
        }
        Command::Produce {
            url,
            to,
            message,
            count,
            key,
            headers,
            declare,
        } => {
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
        Command::Consume {
            url,
            queue,
            count,
            idle,
            declare,
        } => {
            let backend = mailroom::connect(&url).await?;
            if declare {
                backend
                    .topology()
                    .declare_queue(&QueueSpec::new(&queue))
                    .await?;
            }
            let idle = positive_duration(idle, "idle")?;
            let mut consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
            let mut received = 0u64;
            while count.is_none_or(|c| received < c) {
                let Some(delivery) = consumer.receive_timeout(idle).await? else {
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
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run_bench(url: &str, config: &BenchConfig, rounds: usize) -> Result<()> {
    let backend = mailroom::connect(url).await?;
    let version = backend.server_version().await?;
    println!(
        "mailroom bench on {} ({version}): 1 producer, 1 consumer, {}-byte messages, every message acked",
        mailroom::url::redact(url),
        config.payload_size
    );
    // Rounds alternate between the backend and the baseline so that noise from the rest of the
    // machine lands on both; the median of each is compared.
    let baseline = backend.name() == "memory";
    let mut rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let t = bench::throughput(backend.clone(), config).await?;
        rates.push(t.rate());
        last = Some(t);
        if baseline {
            raw_rates.push(bench::throughput_raw_mpsc(config).await.rate());
        }
    }
    let rate = median(&mut rates);
    if let Some(t) = last {
        println!(
            "  throughput  {rate:>12.0} msgs/s   (median of {rounds} rounds of {} messages; last took {:.2?})",
            t.messages, t.elapsed
        );
    }
    let l = bench::latency(backend.clone(), config).await?;
    println!(
        "  latency     at {} msgs/s for {:?}, from intended send time: p50 {} us  p99 {} us  p99.9 {} us  max {} us  ({} messages)",
        config.latency_rate, config.latency_duration, l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
    );
    if baseline {
        let raw = median(&mut raw_rates);
        println!(
            "  baseline    {raw:>12.0} msgs/s   raw tokio::sync::mpsc (capacity {}), same work, median of {rounds}",
            config.queue_bound
        );
        println!(
            "  ratio       {:>12.3}         memory:// / raw mpsc",
            rate / raw
        );
    }
    backend.close().await
}
