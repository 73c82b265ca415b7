//! `mailroom soak`: several producers and consumers at a steady rate for a long time on one
//! broker; prints lost, duplicates, end-to-end latency percentiles and the client's
//! resident-memory curve, and fails when anything confirmed was lost or memory kept growing.

use clap::Args;
use mailroom_testkit::SoakScenario;

use crate::{positive_duration, Failure};

/// The `soak` subcommand's arguments.
#[derive(Args)]
pub(crate) struct SoakArgs {
    /// Broker URL (memory:// runs the in-process broker).
    #[arg(long, default_value = "memory://")]
    url: String,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 600.0)]
    seconds: f64,
    /// Messages per second, all producers together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Producers (each with its own producer handle).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Consumers on the queue (competing; a partitioned queue gets one partition each).
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Seconds between resident-memory samples.
    #[arg(long, default_value_t = 5.0)]
    sample_every: f64,
    /// Resident-memory growth allowed between the run's second and last quarter, in KiB, on
    /// top of 10 % of the warmed-up level.
    #[arg(long, default_value_t = 16_384)]
    memory_tolerance_kib: u64,
}

/// Run `mailroom soak`.
pub(crate) async fn run(args: SoakArgs) -> Result<(), Failure> {
    let duration = positive_duration(args.seconds, "seconds")?;
    let sample_every = positive_duration(args.sample_every, "sample-every")?;
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(Failure::Usage(format!(
            "--rate must be a positive number of messages per second, got {}",
            args.rate
        )));
    }
    let backend = mailroom::connect(&args.url).await?;
    eprintln!(
        "soak on {}: {} producers, {} consumers, {} msgs/s, {} B, {:.0} s",
        backend.name(),
        args.producers,
        args.consumers,
        args.rate,
        args.size,
        duration.as_secs_f64()
    );
    let report = SoakScenario::new(args.producers, args.consumers, args.rate, duration)
        .payload_bytes(args.size)
        .sample_every(sample_every)
        .run(backend.clone())
        .await;
    let _ = backend.close().await;
    let report = report?;
    print!("{}", report.render(40));
    let flat = report.memory_is_flat(args.memory_tolerance_kib);
    println!(
        "verdict: lost {} ({}), memory {}",
        report.lost,
        if report.lost == 0 { "ok" } else { "FAILED" },
        match flat {
            Some(true) => "flat",
            Some(false) => "GROWING",
            None => "not sampled enough to judge",
        }
    );
    if report.lost > 0 {
        return Err(Failure::Runtime(format!(
            "{} confirmed message(s) were never received",
            report.lost
        )));
    }
    if flat == Some(false) {
        return Err(Failure::Runtime(format!(
            "resident memory grew by {} KiB between the second and the last quarter of the run",
            report.memory_growth_kib().unwrap_or_default()
        )));
    }
    Ok(())
}
