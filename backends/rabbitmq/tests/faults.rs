//! The broker restarts twice in the middle of a 10,000-message run; nothing is lost.
//!
//! The scenario is the testkit's [`mailroom_testkit::RestartScenario`], the same on every
//! backend; this crate's restart hook is in `common/restart.rs` (tests/restart_soak.rs repeats
//! the run). It stops the shared broker, so it is `#[ignore]`d in a plain `cargo test` (other
//! test binaries may be using RabbitMQ at the same moment) and run on its own by scripts/test.sh:
//! `cargo test -p mailroom-rabbitmq --test faults -- --ignored --nocapture`.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the shared RabbitMQ: run alone with --ignored (scripts/test.sh does)"]
async fn ten_thousand_messages_survive_two_broker_restarts() {
    let report = common::restart::run(10_000).await;
    eprintln!("faults: {report}");
    common::restart::check(&report);
}
