//! mailroom-rabbitmq vs raw lapin on the same broker, in one process, closed loop: 1 KiB
//! messages published with confirms (the same window of unconfirmed messages on both sides),
//! then consumed with a manual ack each (the same prefetch); persistent messages, a durable
//! classic queue. Both sides are the harness's drivers, the raw one being
//! `mailroom_bench::raw_lapin` (see `mailroom_bench::versus`).
//!
//! `cargo bench -p mailroom-bench --features rabbitmq --bench vs_lapin` (env
//! `MAILROOM_RABBITMQ_URL`; `MAILROOM_BENCH_N`, default 20,000; `MAILROOM_BENCH_ROUNDS`, default 4).

use mailroom_bench::versus;

/// The window and prefetch both sides use, unless the URL from the environment sets its own.
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?confirm_window=1024&prefetch=100";
const SIZE: usize = 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> mailroom::Result<()> {
    let url = std::env::var("MAILROOM_RABBITMQ_URL").unwrap_or_else(|_| URL.to_owned());
    let (n, rounds) = versus::size_from_env(20_000, 4);
    let result = versus::compare(&url, n, SIZE, rounds).await?;
    println!("broker {}", mailroom::url::redact(&url));
    for line in result.lines() {
        println!("{line}");
    }
    Ok(())
}
