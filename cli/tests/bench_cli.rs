//! `mailroom bench --url URL --workload FILE` prints the "mailroom vs raw" ratio beside each
//! raw-client baseline: memory:// (raw mpsc) always, RabbitMQ (raw lapin) with the `rabbitmq`
//! feature, Kafka (raw rdkafka) and SQS (raw aws-sdk-sqs) with theirs, on the brokers
//! `scripts/brokers.sh up` starts (`MAILROOM_RABBITMQ_URL`, `MAILROOM_KAFKA_URL`,
//! `MAILROOM_SQS_URL` override the addresses).

use std::process::Command;
#[cfg(any(feature = "rabbitmq", feature = "kafka", feature = "sqs"))]
use std::time::Duration;

#[path = "../../bench/tests/common/mod.rs"]
mod common;
use common::{tmp, workload, workload_warm};

/// `mailroom bench --url URL --workload FILE`: its stdout, after checking it succeeded.
fn bench_cli(url: &str, file: &std::path::Path) -> String {
    // An overall bound per run (the harness's own bounds are inside the binary): a stuck run is
    // killed and fails its test instead of holding the suite.
    let out = Command::new("timeout")
        .args(["--kill-after=10", "300", env!("CARGO_BIN_EXE_mailroom")])
        .args(["bench", "--url", url, "--workload"])
        .arg(file)
        .args(["--stats-interval", "10"])
        .output()
        .expect("mailroom runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mailroom bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The ratio of the `mailroom vs raw: <backend> ... vs <raw> ...` line, which must be there.
fn ratio_line(stdout: &str, backend: &str, raw: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("mailroom vs raw: {backend} ")))
        .unwrap_or_else(|| panic!("no `mailroom vs raw: {backend}` line in:\n{stdout}"));
    assert!(line.contains(&format!(" vs {raw} ")), "{line}");
    let ratio = line.split(", ratio ").nth(1)?;
    let ratio: f64 = ratio.split(';').next().unwrap().trim().parse().unwrap();
    Some(ratio)
}

#[test]
fn bench_prints_the_raw_mpsc_ratio_for_memory() {
    let dir = tmp();
    let stdout = bench_cli("memory://", &workload(&dir, 2_000, 2_000));
    let ratio = ratio_line(&stdout, "memory", "raw-mpsc").expect("a ratio at a fixed rate");
    assert!(ratio > 0.0, "{stdout}");
}

/// Connect, retrying for a while: a broker restarted by another test may still be starting.
#[cfg(any(feature = "rabbitmq", feature = "kafka", feature = "sqs"))]
async fn reachable(url: &str) {
    let started = std::time::Instant::now();
    loop {
        match mailroom::connect(url).await {
            Ok(broker) => {
                let _ = broker.close().await;
                return;
            }
            Err(e) if e.is_temporary() && started.elapsed() < Duration::from_secs(60) => {
                eprintln!(
                    "{} not reachable yet ({e}); retrying",
                    mailroom::url::redact(url)
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("broker not reachable (scripts/brokers.sh up): {e}"),
        }
    }
}

#[cfg(any(feature = "rabbitmq", feature = "kafka", feature = "sqs"))]
fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A fixed rate every broker here sustains, so the ratio compares two runs that both kept up.
#[cfg(any(feature = "rabbitmq", feature = "kafka", feature = "sqs"))]
async fn ratio_on(url: &str, backend: &str, raw: &str, warmup: u32) {
    reachable(url).await;
    let dir = tmp();
    let file = workload_warm(&dir, 200, 200, warmup);
    let url = url.to_owned();
    let stdout = tokio::task::spawn_blocking(move || bench_cli(&url, &file))
        .await
        .unwrap();
    let ratio = ratio_line(&stdout, backend, raw).expect("a ratio at a fixed rate");
    assert!(ratio > 0.0, "{stdout}");
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_lapin_ratio_on_rabbitmq() {
    let url = url(
        "MAILROOM_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    ratio_on(&url, "rabbitmq", "raw-lapin", 2).await;
    // And the raw driver alone, by its raw+ URL.
    let dir = tmp();
    let file = workload(&dir, 200, 200);
    let raw_url = format!("raw+{url}");
    let stdout = tokio::task::spawn_blocking(move || bench_cli(&raw_url, &file))
        .await
        .unwrap();
    assert!(stdout.contains("raw-lapin"), "{stdout}");
    assert!(!stdout.contains("mailroom vs raw"), "{stdout}");
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_rdkafka_ratio_on_kafka() {
    let url = url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092");
    // Joining a consumer group takes a moment: a longer run keeps that out of the ratio.
    ratio_on(&url, "kafka", "raw-rdkafka", 8).await;
}

#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sqs_ratio_on_sqs() {
    let url = url("MAILROOM_SQS_URL", "sqs://127.0.0.1:4566?region=us-east-1");
    ratio_on(&url, "sqs", "raw-sqs", 2).await;
}
