//! The broker-restart scenario of tests/faults.rs (the testkit's, with `common/restart.rs`'s
//! hook), many times in a row: a hang or a loss that shows in one run out of a few shows here.
//!
//! A run takes about 25 s, so 20 runs take about 8 minutes: too long for scripts/test.sh. Run it
//! alone (it stops the shared broker):
//! `cargo test -p mailroom-rabbitmq --all-features --test restart_soak -- --ignored --nocapture`
//! (`MAILROOM_SOAK_RUNS=n` changes the number of runs). Each run has its own bound, so a hang
//! fails the test and names the step each task was waiting in.

mod common;

use std::time::Duration;

use common::restart;
use mailroom_testkit::RestartReport;

const MESSAGES: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the shared RabbitMQ 40 times (about 8 minutes): run alone with --ignored"]
async fn the_restart_scenario_twenty_times_in_a_row() {
    let runs: usize = std::env::var("MAILROOM_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut all: Vec<RestartReport> = Vec::with_capacity(runs);
    for run in 1..=runs {
        let report = restart::run(MESSAGES).await;
        eprintln!("run {run}/{runs}: {report}");
        restart::check(&report);
        all.push(report);
    }
    let messages: usize = all.iter().map(|o| o.messages).sum();
    let lost: usize = all.iter().map(|o| o.lost).sum();
    let duplicates: usize = all.iter().map(|o| o.duplicates).sum();
    let restarts: usize = all.iter().map(|o| o.restarts_done).sum();
    let longest = all
        .iter()
        .map(RestartReport::longest_recovery)
        .max()
        .unwrap_or(Duration::ZERO);
    eprintln!(
        "soak: {runs} runs, 0 hangs, {restarts} restarts, {messages} messages, {lost} lost, \
         {duplicates} duplicates, longest recovery {longest:?}"
    );
    assert_eq!(restarts, 2 * runs, "every run restarted the broker twice");
    assert_eq!(lost, 0, "{lost} messages lost over {runs} runs");
}
