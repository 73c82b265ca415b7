//! `mailroom bench`: the quick throughput + latency run, or workload files through the harness,
//! each beside its raw baseline.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use mailroom::Result;
use mailroom_bench::{self as bench, BenchConfig};

use crate::positive_duration;

/// The `bench` subcommand's arguments.
#[derive(Args)]
pub(crate) struct BenchArgs {
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
    /// Throughput rounds after a warm-up round (the median is reported; against the raw
    /// baseline, the median of the rounds' ratios).
    #[arg(long, default_value_t = 9)]
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
}

/// Run `mailroom bench`.
pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    let BenchArgs {
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
    } = args;
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Each round's ratio, backend rate ÷ raw rate, for the rounds both sides ran.
fn ratios(rates: &[f64], raw_rates: &[f64]) -> Vec<f64> {
    rates
        .iter()
        .zip(raw_rates)
        .filter(|(_, raw)| **raw > 0.0)
        .map(|(rate, raw)| rate / raw)
        .collect()
}

/// The median of `values` and their lowest and highest; `None` when there are none.
fn median_and_range(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let median = median(&mut values);
    Some((median, values[0], values[values.len() - 1]))
}

async fn run_bench(url: &str, config: &BenchConfig, rounds: usize) -> Result<()> {
    let backend = mailroom::connect(url).await?;
    let version = backend.server_version().await?;
    println!(
        "mailroom bench on {} ({version}): 1 producer, 1 consumer, {}-byte messages, every message acked",
        mailroom::url::redact(url),
        config.payload_size
    );
    let baseline = backend.name() == "memory";
    // A round of each first, not counted: the first queue, channel and allocator arenas of the
    // process are set up in it, on whichever side happens to run first.
    bench::throughput(backend.clone(), config).await?;
    if baseline {
        bench::throughput_raw_mpsc(config).await;
    }
    // A round is ~60 ms at the defaults: the rest of the machine moves one round's figure by
    // a third. The two sides take turns, in ABBA order, so such a spell lands on both, and the
    // ratio is the median of the rounds' own ratios.
    let mut rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut last = None;
    for round in 0..rounds {
        if baseline && round % 2 == 1 {
            raw_rates.push(bench::throughput_raw_mpsc(config).await.rate());
        }
        let t = bench::throughput(backend.clone(), config).await?;
        rates.push(t.rate());
        last = Some(t);
        if baseline && round % 2 == 0 {
            raw_rates.push(bench::throughput_raw_mpsc(config).await.rate());
        }
    }
    let round_ratios = ratios(&rates, &raw_rates);
    let rate = median(&mut rates);
    if let Some(t) = last {
        println!(
            "  throughput  {rate:>12.0} msgs/s   (median of {rounds} rounds of {} messages after a warm-up round; last took {:.2?})",
            t.messages, t.elapsed
        );
    }
    let l = bench::latency(backend.clone(), config).await?;
    println!(
        "  latency     at {} msgs/s for {:?}, from intended send time: p50 {} us  p99 {} us  p99.9 {} us  max {} us  ({} messages); publish delay p50 {} us  p99 {} us",
        config.latency_rate, config.latency_duration, l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count, l.delay_p50_us, l.delay_p99_us
    );
    if baseline {
        let raw = median(&mut raw_rates);
        println!(
            "  baseline    {raw:>12.0} msgs/s   raw tokio::sync::mpsc (capacity {}), same work, median of {rounds}",
            config.queue_bound
        );
        if let Some((ratio, lo, hi)) = median_and_range(round_ratios) {
            println!(
                "  ratio       {ratio:>12.3}         memory:// / raw mpsc (median of {rounds} paired rounds, range {lo:.3}–{hi:.3})"
            );
        }
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
    println!("\n{}", mailroom_bench::summary::summary_table(&results));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_the_median_of_the_rounds_ratios_not_of_each_sides_median() {
        // A busy spell slowed both sides of rounds 2 and 3 alike: those rounds still say 0.6.
        // The ratio of the two sides' medians (0.5 / 1.0) would mix rounds and say 0.5.
        let rates = [0.6, 0.36, 0.36, 0.5, 0.5];
        let raw = [1.0, 0.6, 0.6, 1.0, 1.0];
        let (ratio, lo, hi) = median_and_range(ratios(&rates, &raw)).expect("rounds");
        assert!((ratio - 0.6).abs() < 1e-3, "{ratio}");
        assert!(lo <= ratio && ratio <= hi);
        assert_eq!(median_and_range(Vec::new()), None);
    }
}
