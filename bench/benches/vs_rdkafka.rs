//! mailroom-kafka vs raw rdkafka on the same broker, in one process, closed loop: 1 KiB
//! messages produced with every delivery report awaited (after one warm-up record per producer,
//! on both sides), then consumed with offsets stored per message and committed. Raw rdkafka uses
//! the backend's own librdkafka properties; both sides are the harness's drivers, the raw one
//! being `mailroom_bench::raw_kafka` (see `mailroom_bench::versus`).
//!
//! "after first" leaves out the consumer group's join (subscribe to first message), which is
//! the broker's rebalance, not consumption.
//!
//! `cargo bench -p mailroom-bench --features kafka --bench vs_rdkafka` (env
//! `MAILROOM_KAFKA_URL`; `MAILROOM_BENCH_N`, default 10,000; `MAILROOM_BENCH_ROUNDS`, default 5).

use mailroom_bench::versus;

const SIZE: usize = 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> mailroom::Result<()> {
    let url =
        std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());
    let (n, rounds) = versus::size_from_env(10_000, 5);
    let result = versus::compare(&url, n, SIZE, rounds).await?;
    println!("broker {}", mailroom::url::redact(&url));
    for line in result.lines() {
        println!("{line}");
    }
    Ok(())
}
