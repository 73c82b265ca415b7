//! The `mailroom` command: produce, consume and benchmark against any broker URL.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mailroom::{ConsumerOptions, Destination, Message, QueueSpec, Result};
use mailroom_bench::{self as bench, BenchConfig};

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
        /// Broker URL; with --workload, `raw+URL` runs the raw-client baseline alone
        /// (raw+memory://, raw+amqp://..., raw+kafka://..., raw+sqs://...).
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
        /// Run OMB-format workload files through the harness instead (repeatable), with the
        /// backend's raw baseline where this build has one.
        #[arg(long = "workload", value_name = "FILE")]
        workloads: Vec<PathBuf>,
        /// With --workload: write each result as OMB-format JSON into this folder.
        #[arg(long, value_name = "DIR")]
        json: Option<PathBuf>,
        /// With --workload: seconds between periodic stats.
        #[arg(long, default_value_t = 10.0)]
        stats_interval: f64,
        /// With --workload: skip the raw baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Also measure the harness's own overhead (raw mpsc through the harness vs a bare loop).
        #[arg(long)]
        harness_overhead: bool,
    },
    /// Run workloads on each backend URL, run the conformance suite on each, and write a
    /// Markdown + HTML report (no URL: memory:// only).
    Compare {
        /// Backend URLs (default: memory://).
        urls: Vec<String>,
        /// Use the brokers scripts/brokers.sh starts (every scheme this build has) plus memory://.
        #[arg(long)]
        local: bool,
        /// Workload files (default: the built-in bench/workloads/).
        #[arg(long = "workloads", value_name = "FILE", num_args = 1..)]
        workloads: Vec<PathBuf>,
        /// Report folder (default: reports/compare-<UTC time>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Skip the conformance suite.
        #[arg(long)]
        no_conformance: bool,
        /// Skip the raw baselines.
        #[arg(long)]
        no_baseline: bool,
        /// Skip the harness-overhead measurement.
        #[arg(long)]
        no_overhead: bool,
        /// Seconds between periodic stats.
        #[arg(long, default_value_t = 10.0)]
        stats_interval: f64,
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
        /// Wait this many seconds for the first message (a Kafka consumer must first be given
        /// partitions by its group; while waiting, what it waits for is printed).
        #[arg(long, default_value_t = 30.0)]
        first_wait: f64,
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
            workloads,
            json,
            stats_interval,
            no_baseline,
            harness_overhead,
        } => {
            if !workloads.is_empty() {
                let options = mailroom_bench::runner::RunOptions {
                    stats_interval: positive_duration(stats_interval, "stats-interval")?,
                    url: mailroom::url::redact(&url).to_string(),
                    ..Default::default()
                };
                run_workloads(&url, &workloads, json.as_deref(), &options, !no_baseline).await?;
                if harness_overhead {
                    print_overhead().await?;
                }
                return Ok(());
            }
            if url.starts_with(mailroom_bench::raw::RAW_PREFIX) {
                return Err(mailroom::Error::config(format!(
                    "--url {}: raw baselines run through the workload harness; add --workload FILE",
                    mailroom::url::redact(&url)
                )));
            }
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
            run_bench(&url, &config, rounds).await?;
            if harness_overhead {
                print_overhead().await?;
            }
            Ok(())
        }
        Command::Compare {
            urls,
            local,
            workloads,
            out,
            no_conformance,
            no_baseline,
            no_overhead,
            stats_interval,
        } => {
            let mut urls = urls;
            if local {
                for u in mailroom_bench::compare::local_urls(&mailroom::registry().schemes()) {
                    if !urls.contains(&u) {
                        urls.push(u);
                    }
                }
            }
            if urls.is_empty() {
                urls.push("memory://".into());
            }
            let command = std::env::args()
                .map(|a| mailroom::url::redact(&a).to_string())
                .collect::<Vec<_>>()
                .join(" ");
            let options = mailroom_bench::compare::CompareOptions {
                urls,
                workloads,
                out_dir: out.unwrap_or_else(mailroom_bench::compare::default_out_dir),
                conformance: !no_conformance,
                overhead: !no_overhead,
                baselines: !no_baseline,
                stats_interval: positive_duration(stats_interval, "stats-interval")?,
                command: format!(
                    "mailroom compare{}",
                    command
                        .split_once(" compare")
                        .map_or(String::new(), |(_, rest)| rest.to_owned())
                ),
            };
            let comparison = mailroom_bench::compare::compare(&options).await?;
            let (md, html) = mailroom_bench::compare::write(&comparison, &options.out_dir)?;
            for n in mailroom_bench::report::needs(&comparison) {
                println!("  {:<58} {}", n.need, n.choice);
            }
            let results: Vec<_> = comparison
                .backends
                .iter()
                .flat_map(|b| b.runs.iter().chain(&b.baseline))
                .filter_map(|o| o.result().cloned())
                .collect();
            println!("\n{}", mailroom_bench::result::summary_table(&results));
            for (b, workload, ratio) in mailroom_bench::report::baseline_ratios(&comparison) {
                println!("{}", ratio.line(&b, &workload));
            }
            if let Some(o) = &comparison.overhead {
                println!(
                    "harness overhead: raw mpsc through the harness {:.0} msgs/s vs bare loop {:.0} msgs/s, ratio {:.3}",
                    o.harness_rate, o.bare_rate, o.ratio
                );
            }
            println!(
                "report: {} and {} ({:.0} s)",
                md.display(),
                html.display(),
                comparison.elapsed.as_secs_f64()
            );
            let unreachable: Vec<String> = comparison
                .backends
                .iter()
                .filter_map(|b| b.error.as_ref().map(|e| format!("{}: {e}", b.url)))
                .collect();
            if !unreachable.is_empty() {
                return Err(mailroom::Error::new(
                    mailroom::ErrorKind::Connection,
                    format!(
                        "the report was written, but {} backend(s) could not be opened: {}",
                        unreachable.len(),
                        unreachable.join("; ")
                    ),
                ));
            }
            Ok(())
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
            first_wait,
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
    }
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

async fn print_overhead() -> Result<()> {
    let o = mailroom_bench::overhead::measure(Duration::from_secs(1), 3, 100).await?;
    println!(
        "  harness     {:>12.0} msgs/s   raw tokio mpsc through the harness (open-loop scheduling, timestamps, histograms)",
        o.harness_rate
    );
    println!(
        "  bare loop   {:>12.0} msgs/s   the same channel in a bare send/receive loop",
        o.bare_rate
    );
    println!(
        "  overhead    {:>12.3}         harness / bare loop (median of {} rounds of {:?})",
        o.ratio, o.rounds, o.round
    );
    Ok(())
}

async fn run_workloads(
    url: &str,
    files: &[PathBuf],
    json: Option<&std::path::Path>,
    options: &mailroom_bench::runner::RunOptions,
    baseline: bool,
) -> Result<()> {
    use mailroom_bench::{result, runner, workload};
    // Every file is checked before anything runs, so a typo fails at once.
    let plans = files
        .iter()
        .map(|f| workload::load_plan(f))
        .collect::<Result<Vec<_>>>()?;
    let driver = mailroom_bench::raw::driver_for(url).await?;
    for plan in &plans {
        driver.check(plan)?;
    }
    // A raw+ URL is a baseline already; a backend URL gets its own beside it.
    let raw = match (baseline, url.starts_with(mailroom_bench::raw::RAW_PREFIX)) {
        (true, false) => mailroom_bench::raw::baseline_for(url).await?,
        _ => None,
    };
    let mut results = Vec::new();
    for plan in &plans {
        eprintln!(
            "{} on {} ({})",
            plan.workload.name,
            options.url,
            driver.server_version().await
        );
        let mut r = runner::run(driver.clone(), plan, options).await?;
        let raw_result = match &raw {
            Some(raw) => {
                eprintln!("{} on {} (baseline)", plan.workload.name, raw.name());
                let raw_options = runner::RunOptions {
                    url: raw.name(),
                    ..options.clone()
                };
                Some(runner::run(raw.clone(), plan, &raw_options).await?)
            }
            None => None,
        };
        if let Some(rr) = &raw_result {
            let ratio = result::BaselineRatio::of(&r, rr);
            println!("{}", ratio.line(&r.driver, &plan.workload.name));
            r.mailroom.baseline = Some(ratio);
        }
        results.push(r);
        results.extend(raw_result);
    }
    println!("\n{}", result::summary_table(&results));
    if let Some(dir) = json {
        std::fs::create_dir_all(dir).map_err(|e| {
            mailroom::Error::config(format!("cannot create {}: {e}", dir.display()))
        })?;
        for (i, r) in results.iter().enumerate() {
            let path = dir.join(format!(
                "{}-{i:02}-{}.json",
                r.driver,
                mailroom_bench::compare::slug(&r.workload)
            ));
            let text = serde_json::to_string_pretty(r)
                .map_err(|e| mailroom::Error::config(format!("result JSON: {e}")))?;
            std::fs::write(&path, text).map_err(|e| {
                mailroom::Error::config(format!("cannot write {}: {e}", path.display()))
            })?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
