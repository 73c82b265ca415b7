//! The report's persistence row cites the broker-restart run `compare --restart-brokers` made:
//! "checked" only when the run passed, "FAILED" with its figures when it lost messages, and
//! "declared" when no broker was restarted.

use std::time::Duration;

use mailroom::Capabilities;
use mailroom_bench::compare::{BackendReport, Comparison};
use mailroom_bench::persistence::PersistenceCheck;
use mailroom_bench::report::needs;
use mailroom_testkit::{RestartReport, Retention};

fn restart_run(lost: usize) -> RestartReport {
    RestartReport {
        retention: Retention::QueuesAndMessages,
        messages: 5_000,
        required: 5_000,
        deliveries: 5_120 - lost,
        duplicates: 120,
        lost,
        lost_to_restart: 0,
        resent: 37,
        unreturned: 0,
        failed_acks: 0,
        failures: Vec::new(),
        slowest_send: Duration::from_millis(40),
        recoveries: vec![Duration::from_millis(1_200), Duration::from_millis(800)],
        restarts_done: 2,
        hook_errors: Vec::new(),
        elapsed: Duration::from_secs(12),
    }
}

fn persistence_row(persistence: Option<PersistenceCheck>) -> (String, String) {
    let mut caps = Capabilities::default();
    caps.persistence = true;
    let comparison = Comparison {
        backends: vec![BackendReport {
            url: "amqp://127.0.0.1:5672".into(),
            name: "rabbitmq".into(),
            server_version: "test".into(),
            capabilities: Some(caps),
            conformance: Vec::new(),
            runs: Vec::new(),
            baseline: Vec::new(),
            persistence,
            routing: None,
            error: None,
            variant: None,
        }],
        overhead: None,
        command: "test".into(),
        started: "now".into(),
        elapsed: Duration::from_secs(1),
        machine: "test".into(),
        scaling: Vec::new(),
    };
    let line = needs(&comparison)
        .into_iter()
        .find(|l| l.need.contains("persistence"))
        .expect("a persistence row");
    (line.choice, line.evidence)
}

#[test]
fn a_passed_restart_run_makes_the_row_checked_with_its_figures() {
    let (choice, evidence) = persistence_row(Some(PersistenceCheck {
        method: "rabbitmqctl stop_app / start_app",
        outcome: Ok(restart_run(0)),
    }));
    assert_eq!(choice, "rabbitmq (checked)");
    assert!(
        evidence.contains("broker-restart scenario passed")
            && evidence.contains("5000 messages across 2 restarts")
            && evidence.contains("0 lost, 120 duplicates")
            && evidence.contains("recovered in 1.2 s and 0.8 s"),
        "{evidence}"
    );
}

#[test]
fn a_run_that_lost_messages_is_reported_failed_not_checked() {
    let (choice, evidence) = persistence_row(Some(PersistenceCheck {
        method: "rabbitmqctl stop_app / start_app",
        outcome: Ok(restart_run(3)),
    }));
    assert_eq!(choice, "none of the measured backends");
    assert!(
        evidence.contains("FAILED") && evidence.contains("3 lost"),
        "{evidence}"
    );
}

#[test]
fn a_run_that_could_not_be_carried_out_is_reported_failed() {
    let (choice, evidence) = persistence_row(Some(PersistenceCheck {
        method: "rabbitmqctl stop_app / start_app",
        outcome: Err("rabbitmqctl could not run".into()),
    }));
    assert_eq!(choice, "none of the measured backends");
    assert!(evidence.contains("could not run"), "{evidence}");
}

#[test]
fn without_a_restart_run_the_row_says_declared_and_how_to_show_it() {
    let (choice, evidence) = persistence_row(None);
    assert_eq!(choice, "rabbitmq (declared)");
    assert!(evidence.contains("--restart-brokers"), "{evidence}");
}
