//! `mailroom soak`, run briefly on every broker: the same code path `scripts/soak.sh` drives for
//! ten minutes per broker. Nothing confirmed may be lost, the report must carry latency
//! percentiles and a memory curve, and the verdict line must say so.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A short soak: 4 s at 500 msgs/s, two producers and two consumers, memory sampled 5 times a
/// second so that the curve has enough points to judge.
fn soak(url: &str) -> Output {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args([
            "soak",
            "--url",
            url,
            "--seconds",
            "4",
            "--rate",
            "500",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--size",
            "256",
            "--sample-every",
            "0.2",
        ])
        .output()
        .expect("the mailroom binary runs");
    // The scenario bounds itself (duration + drain + a minute); this says so if it did not.
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "soak on {url} took {:?}",
        started.elapsed()
    );
    out
}

fn check(url: &str) {
    let out = soak(url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak on {url} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let counts = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| panic!("no counts line:\n{stdout}"));
    let field = |name: &str| -> usize {
        let words: Vec<&str> = counts.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == name)
            .unwrap_or_else(|| panic!("no '{name}' in {counts}"));
        words[at + 1].parse().expect("a count")
    };
    // 4 s at 500 msgs/s: about 2,000 sent; a loaded machine may fall behind, not to nothing.
    assert!(field("sent") >= 1_000, "{counts}");
    assert_eq!(field("confirmed"), field("sent"), "{counts}");
    assert_eq!(field("received"), field("confirmed"), "{counts}");
    assert_eq!(field("lost"), 0, "{counts}");
    assert!(
        stdout.contains("end-to-end latency µs: p50 "),
        "no latency line:\n{stdout}"
    );
    let curve = stdout.lines().filter(|l| l.contains(" KiB ")).count();
    assert!(curve >= 8, "memory curve has {curve} rows:\n{stdout}");
    assert!(
        stdout.contains("verdict: lost 0 (ok), memory flat"),
        "verdict:\n{stdout}"
    );
}

#[test]
fn a_short_soak_on_memory_loses_nothing_and_reports_a_curve() {
    check("memory://");
}

#[test]
fn a_short_soak_on_rabbitmq_loses_nothing_and_reports_a_curve() {
    check(&url(
        "MAILROOM_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    ));
}

#[test]
fn a_short_soak_on_kafka_loses_nothing_and_reports_a_curve() {
    check(&url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092"));
}

#[test]
fn a_short_soak_on_sqs_loses_nothing_and_reports_a_curve() {
    check(&url(
        "MAILROOM_SQS_URL",
        "sqs://127.0.0.1:4566?region=us-east-1",
    ));
}

#[test]
fn a_rate_that_is_not_positive_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["soak", "--rate", "0", "--seconds", "1"])
        .output()
        .expect("the mailroom binary runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate must be a positive"));
}
