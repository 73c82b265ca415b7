//! mailroom-kafka vs raw rdkafka on the same broker, in one process, closed loop: 1 KiB
//! messages produced with every delivery report awaited (after one warm-up record per producer,
//! on both sides), then consumed with offsets stored per message for the commit. Raw rdkafka
//! uses the backend's own librdkafka properties and writes the records the backend writes; both
//! sides are the harness's drivers, the raw one being `mailroom_bench::raw_kafka` (what each
//! figure measures: `mailroom_bench::versus`).
//!
//! The consume rate runs from the first message to the last: the consumer group's join before
//! it (the broker's rebalance, the same on both sides) is printed apart as "first message".
//!
//! `cargo bench --workspace --all-features --bench vs_rdkafka` (env `MAILROOM_KAFKA_URL`;
//! `MAILROOM_BENCH_N`, default 100,000: a round of 10,000 drained in ~25 ms, too short to time
//! on a busy machine; `MAILROOM_BENCH_ROUNDS`, default 5).

use mailroom_bench::versus;

const SIZE: usize = 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> mailroom::Result<()> {
    let url =
        std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());
    let (n, rounds) = versus::size_from_env(100_000, 5);
    let result = versus::compare(&url, n, SIZE, rounds).await?;
    println!("broker {}", mailroom::url::redact(&url));
    for line in result.lines() {
        println!("{line}");
    }
    Ok(())
}
