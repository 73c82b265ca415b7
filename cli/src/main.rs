//! The `mailroom` command: produce, consume and benchmark against any broker URL.
//!
//! One module per subcommand: `bench`, `compare`, `produce`, `consume`, `soak`; this file parses the
//! command line and hands each subcommand its arguments.

mod bench;
mod compare;
mod consume;
mod jsonl;
mod produce;
mod soak;

use std::fmt;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mailroom::Result;

#[derive(Parser)]
#[command(
    name = "mailroom",
    version,
    about = "One set of traits over many message brokers",
    after_help = EXIT_CODES
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
    /// Send messages to a queue or an exchange: --message, one per line of a file
    /// (--from-lines), or the JSON lines `consume --format json` writes (--from-json).
    #[command(after_help = EXIT_CODES)]
    Produce(produce::ProduceArgs),
    /// Receive, print and ack messages from a queue (--format json: one JSON object per line).
    #[command(after_help = EXIT_CODES)]
    Consume(consume::ConsumeArgs),
    /// Producers and consumers at a steady rate for minutes: lost, duplicates, latency
    /// percentiles and this process's resident-memory curve (scripts/soak.sh runs it per broker).
    Soak(soak::SoakArgs),
}

/// What each exit status means, shown under `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0  done (consume: also when it stopped on --idle or --first-wait before --count)
  1  the broker or the connection failed (the message says which operation)
  2  the command line is wrong: a missing or bad flag, a bad URL, or memory:// for
     produce/consume (it lives inside one process)
  3  a line of --from-lines/--from-json is not a valid message (or the broker refused it as
     invalid or too large); the error names the line, and the lines before it were sent and
     confirmed

Logging: MAILROOM_LOG (else RUST_LOG) sets the library's log filter, `warn` by default
(e.g. MAILROOM_LOG=mailroom=debug); log lines go to stderr, coloured only on a terminal.";

/// Why a command failed, which picks its exit status; the text is the `error:` line.
pub(crate) enum Failure {
    /// The command line is wrong (exit 2, as clap's own usage errors).
    Usage(String),
    /// A line of input is not a valid message (exit 3).
    Input(String),
    /// The broker, the connection or the library failed (exit 1).
    Runtime(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Runtime(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Input(_) => 3,
        }
    }
}

impl From<mailroom::Error> for Failure {
    fn from(e: mailroom::Error) -> Self {
        // A bad URL or flag value is the command line's fault, not the broker's.
        if e.kind() == mailroom::ErrorKind::Config {
            Failure::Usage(e.to_string())
        } else {
            Failure::Runtime(e.to_string())
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(text) | Failure::Input(text) | Failure::Runtime(text) => {
                f.write_str(text)
            }
        }
    }
}

/// The log filter: `MAILROOM_LOG`, else `RUST_LOG`, else `warn`; a filter that does not parse
/// is said so on stderr rather than silently ignored.
fn log_filter() -> tracing_subscriber::EnvFilter {
    for var in ["MAILROOM_LOG", "RUST_LOG"] {
        if let Ok(text) = std::env::var(var) {
            match tracing_subscriber::EnvFilter::try_new(&text) {
                Ok(filter) => return filter,
                Err(e) => {
                    eprintln!("warning: {var}={text:?} is not a log filter ({e}); using warn")
                }
            }
            break;
        }
    }
    tracing_subscriber::EnvFilter::new("warn")
}

#[tokio::main]
async fn main() -> ExitCode {
    // Colour codes only for a person at a terminal: in a pipe or a log file they are noise
    // before the `error:` line.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
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

async fn run(command: Command) -> std::result::Result<(), Failure> {
    match command {
        Command::Bench(args) => Ok(bench::run(args).await?),
        Command::Compare(args) => Ok(compare::run(args).await?),
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Soak(args) => soak::run(args).await,
    }
}

/// Connect for `produce` / `consume`, refusing memory://: its queues live inside this one
/// process, so a message produced there is gone when the command exits and a consumer started
/// by another command finds an empty broker. A forgotten or mistyped URL must fail, not
/// "confirm" messages nobody can ever read.
pub(crate) async fn connect_broker(
    url: &str,
    command: &str,
) -> std::result::Result<std::sync::Arc<dyn mailroom::Backend>, Failure> {
    let backend = mailroom::connect(url).await?;
    if backend.name() == "memory" {
        let _ = backend.close().await;
        return Err(Failure::Usage(format!(
            "`mailroom {command}` does not work on memory://: its queues live inside one process, \
             so what one command sends is gone when it exits and another command never sees it. \
             Give a broker's URL, e.g. --url amqp://guest:guest@127.0.0.1:5672/%2f, \
             --url kafka://127.0.0.1:9092 or --url sqs://127.0.0.1:4566?region=us-east-1 \
             (memory:// is for tests and benchmarks inside one program: `mailroom bench`)"
        )));
    }
    Ok(backend)
}
