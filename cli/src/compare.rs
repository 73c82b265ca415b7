//! `mailroom compare`: workloads and conformance on several backends, written as a report.

use std::path::PathBuf;

use clap::Args;
use mailroom::Result;

use crate::positive_duration;

/// The `compare` subcommand's arguments.
#[derive(Args)]
pub(crate) struct CompareArgs {
    /// Backend URLs (default: memory://).
    urls: Vec<String>,
    /// Use the brokers scripts/brokers.sh starts (every scheme this build has) plus memory://.
    #[arg(long)]
    local: bool,
    /// Workload files (default: the built-in bench/workloads/).
    #[arg(long = "workloads", value_name = "FILE", num_args = 1..)]
    workloads: Vec<PathBuf>,
    /// Report folder (default: reports/compare-UTC_TIME).
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
    /// Also stop and start each local broker that declares persistence, twice, during a
    /// 5,000-message run (the broker-restart scenario of the fault tests), so the report shows
    /// persistence instead of citing it. Only brokers at scripts/brokers.sh's default addresses
    /// are touched; do not use it while anything else uses them.
    #[arg(long)]
    restart_brokers: bool,
    /// Seconds between periodic stats.
    #[arg(long, default_value_t = 10.0)]
    stats_interval: f64,
    /// Also sweep producers/consumers (1, 2, 4, 8) and payload size (100 B to 256 KiB) on each
    /// backend and draw the curves (about 1 to 2 minutes per backend at the default step).
    #[arg(long)]
    scaling: bool,
    /// Seconds measured per scaling phase (each point has two: saturated, then latency).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        requires = "scaling"
    )]
    scaling_step: f64,
    /// Also run the peer library (omniqueue) on the max-rate workloads, beside raw and
    /// mailroom; needs a build with the `peers` feature.
    #[arg(long)]
    peers: bool,
}

/// Run `mailroom compare`.
pub(crate) async fn run(args: CompareArgs) -> Result<()> {
    let CompareArgs {
        urls,
        local,
        workloads,
        out,
        no_conformance,
        no_baseline,
        no_overhead,
        restart_brokers,
        stats_interval,
        scaling,
        scaling_step,
        peers,
    } = args;
    if peers && !cfg!(feature = "peers") {
        return Err(mailroom::Error::config(
            "--peers needs a build with the `peers` feature (cargo run --release --features peers,rabbitmq,kafka,sqs -- compare ...)",
        ));
    }
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
        restart_brokers,
        stats_interval: positive_duration(stats_interval, "stats-interval")?,
        scaling: if scaling {
            Some(mailroom_bench::scaling::ScalingOptions {
                step: positive_duration(scaling_step, "scaling-step")?,
                ..Default::default()
            })
        } else {
            None
        },
        peers,
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
    println!("\n{}", mailroom_bench::summary::summary_table(&results));
    for (b, workload, ratio) in mailroom_bench::report::baseline_ratios(&comparison) {
        println!("{}", ratio.line(&b, &workload));
    }
    for line in mailroom_bench::scaling::summary_lines(&comparison.scaling) {
        println!("{line}");
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
