//! The harness-overhead figure of `mailroom compare` alone, without brokers or workloads:
//! `cargo run --release -p mailroom-bench --example harness_overhead`.
//!
//! `ROUNDS` (default 3) and `ROUND_SECS` (default 1) set the rounds, as `compare` runs them.
//! `ONLY=harness` or `ONLY=bare` runs just one side once (for `valgrind --tool=callgrind`,
//! where the two sides' instructions per message are what matters, not their rates).

use std::time::Duration;

use mailroom_bench::overhead;
use mailroom_bench::versus::env_or;

#[tokio::main]
async fn main() -> mailroom_core::Result<()> {
    let rounds: usize = env_or("ROUNDS", 3);
    let round = Duration::from_secs_f64(env_or("ROUND_SECS", 1.0));
    match std::env::var("ONLY").as_deref() {
        Ok("harness") => {
            let rate = overhead::through_harness(round, 100).await?;
            println!(
                "harness {rate:.0} msgs/s (~{:.0} messages)",
                rate * round.as_secs_f64()
            );
        }
        Ok("bare") => {
            let rate = overhead::bare_loop(round, 100).await;
            println!(
                "bare {rate:.0} msgs/s (~{:.0} messages)",
                rate * round.as_secs_f64()
            );
        }
        _ => {
            let o = overhead::measure(round, rounds, 100).await?;
            println!(
                "harness {:.0} msgs/s, bare loop {:.0} msgs/s, ratio {:.3} (median of {} rounds of {:?})",
                o.harness_rate, o.bare_rate, o.ratio, o.rounds, o.round
            );
        }
    }
    Ok(())
}
