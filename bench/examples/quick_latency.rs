//! The latency half of `mailroom bench` (memory://, 20,000 msgs/s paced, 3 s), alone and
//! repeated, with the CPU the process took per run:
//! `cargo run --release -p mailroom-bench --example quick_latency`.
//!
//! `RUNS` (default 3), `RATE` (default 20000) and `SECONDS` (default 3) change it.

use std::time::Duration;

use mailroom_bench::cpu::process_cpu_seconds;
use mailroom_bench::versus::env_or;
use mailroom_bench::{latency, BenchConfig};

#[tokio::main]
async fn main() -> mailroom_core::Result<()> {
    let config = BenchConfig {
        latency_rate: env_or("RATE", 20_000),
        latency_duration: Duration::from_secs_f64(env_or("SECONDS", 3.0)),
        ..BenchConfig::default()
    };
    let backend = mailroom::connect("memory://").await?;
    for run in 0..env_or("RUNS", 3usize) {
        let cpu = process_cpu_seconds();
        let l = latency(backend.clone(), &config).await?;
        let cpu = process_cpu_seconds() - cpu;
        println!(
            "run {run}: e2e p50 {} us  p99 {} us  max {} us; publish delay p50 {} us  p99 {} us; CPU {:.2} s / {:?}",
            l.p50_us, l.p99_us, l.max_us, l.delay_p50_us, l.delay_p99_us, cpu, config.latency_duration
        );
    }
    backend.close().await
}
