//! The testkit's broker-restart scenario on RabbitMQ, with the testkit's local restart hook
//! (`rabbitmqctl stop_app` / `start_app` on the shared broker, which keeps its durable queues and
//! their messages).
//!
//! tests/faults.rs runs the scenario once, tests/restart_soak.rs many times in a row. It stops
//! the shared broker, so both are `#[ignore]`d and run alone. The scenario starts the broker
//! again if a run ends while it is stopped.

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::Backend;
use mailroom_rabbitmq::RabbitBackend;
use mailroom_testkit::{LocalRestart, RestartReport, RestartScenario};

/// How long the backend keeps reconnecting; a restart must be over well within it.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(90);
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?reconnect_timeout_ms=90000";
/// Bound of one whole run: the sends, two restarts each recovered within the reconnect
/// timeout, and the drain, with room to spare. A run that takes longer is hanging.
const RUN_BOUND: Duration = Duration::from_secs(240);

/// One run of the scenario with `messages` sends across two restarts. Panics when the run
/// could not be carried out (setup failed, or it hung: the message names the step).
pub async fn run(messages: usize) -> RestartReport {
    let backend = RabbitBackend::from_url(URL).await.expect("connect");
    RestartScenario::new(messages)
        .recovery_bound(RECONNECT_TIMEOUT)
        .run_bound(RUN_BOUND)
        .run(
            Arc::new(backend) as Arc<dyn Backend>,
            Arc::new(LocalRestart::RabbitMq),
        )
        .await
        .unwrap_or_else(|e| panic!("the restart scenario could not run: {e}"))
}

/// The checks every run must pass: both restarts happened, nothing was lost, the consumer
/// never saw an error (the backend reconnects under it), every failed send handed its message
/// back and every re-send after the restarts succeeded.
pub fn check(report: &RestartReport) {
    assert!(report.hook_errors.is_empty(), "{:?}", report.hook_errors);
    assert_eq!(report.restarts_done, 2, "both restarts happened");
    assert_eq!(report.lost, 0, "{} messages lost", report.lost);
    assert_eq!(report.failures_of("receive"), 0, "receive errors: {report}");
    assert_eq!(report.failures_of("re-send"), 0, "re-send errors: {report}");
    assert_eq!(report.unreturned, 0, "a failed send kept its message");
}
