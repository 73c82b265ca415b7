//! The throughput half of `mailroom bench` (memory:// and raw mpsc, 100-byte messages, every
//! message acked), one side run once, for `valgrind --tool=callgrind`, where the two sides'
//! instructions per message are what matters, not their rates:
//! `cargo run --release -p mailroom-bench --example quick_throughput`.
//!
//! `ONLY=memory` (default) or `ONLY=mpsc` picks the side, `N` (default 200000) the messages.
//! Two runs with different `N` give the cost per message as the slope, without the set-up.

use mailroom_bench::versus::env_or;
use mailroom_bench::{throughput, throughput_raw_mpsc, BenchConfig};

#[tokio::main]
async fn main() -> mailroom_core::Result<()> {
    let config = BenchConfig {
        messages: env_or("N", 200_000),
        ..BenchConfig::default()
    };
    let t = match std::env::var("ONLY").as_deref() {
        Ok("mpsc") => throughput_raw_mpsc(&config).await,
        _ => {
            let backend = mailroom::connect("memory://").await?;
            let t = throughput(backend.clone(), &config).await?;
            backend.close().await?;
            t
        }
    };
    println!(
        "{} messages in {:?}: {:.0} msgs/s",
        t.messages,
        t.elapsed,
        t.rate()
    );
    Ok(())
}
