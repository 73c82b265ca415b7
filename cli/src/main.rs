//! The `mailroom` command: produce, consume and benchmark against any broker URL.
//!
//! One module per subcommand: `bench`, `compare`, `produce`, `consume`; this file parses the
//! command line and hands each subcommand its arguments.

mod bench;
mod compare;
mod consume;
mod produce;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mailroom::Result;

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
    Bench(bench::BenchArgs),
    /// Run workloads on each backend URL, run the conformance suite on each, and write a
    /// Markdown + HTML report (no URL: memory:// only).
    Compare(compare::CompareArgs),
    /// Send messages to a queue or an exchange.
    Produce(produce::ProduceArgs),
    /// Receive, print and ack messages from a queue.
    Consume(consume::ConsumeArgs),
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

/// A flag given in seconds, refused unless positive and finite.
pub(crate) fn positive_duration(seconds: f64, flag: &str) -> Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(mailroom::Error::config(format!(
            "--{flag} must be a positive number of seconds, got {seconds}"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Bench(args) => bench::run(args).await,
        Command::Compare(args) => compare::run(args).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
    }
}
