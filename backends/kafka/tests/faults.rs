//! 10,000 messages while Apache Kafka is killed (SIGKILL) and restarted twice mid-run: every
//! message is received at least once; duplicates are counted, none is lost.
//!
//! The scenario is the testkit's [`RestartScenario`], the same on every backend; this file
//! uses the testkit's local restart hook for Kafka (`scripts/brokers.sh kill kafka` / `up kafka`).
//!
//! Ignored by default because it stops the shared broker; run it alone:
//! `cargo test -p mailroom-kafka --test faults -- --ignored --nocapture`

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::Backend;
use mailroom_kafka::KafkaBackend;
use mailroom_testkit::{LocalRestart, RestartScenario};

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "kills and restarts the shared Kafka broker; run alone with --ignored"]
async fn ten_thousand_messages_survive_two_broker_kills() {
    let backend = KafkaBackend::from_url(&url()).await.unwrap();
    // The whole run is bounded, so that a send or receive that never returns fails the test,
    // saying which step it was in, instead of holding CI. A killed broker comes back through
    // brokers.sh and the consumer group settles again, so recovery gets longer than on RabbitMQ.
    let report = RestartScenario::new(10_000)
        .recovery_bound(Duration::from_secs(180))
        .run_bound(Duration::from_secs(480))
        .run(
            Arc::new(backend) as Arc<dyn Backend>,
            Arc::new(LocalRestart::Kafka),
        )
        .await
        .unwrap_or_else(|e| panic!("the restart scenario could not run: {e}"));
    eprintln!("fault run: {report}");
    assert!(report.hook_errors.is_empty(), "{:?}", report.hook_errors);
    assert_eq!(report.restarts_done, 2, "both kills and restarts happened");
    assert_eq!(report.unreturned, 0, "a failed send kept its message");
    assert_eq!(
        report.lost, 0,
        "{} of {} lost ({report})",
        report.lost, report.messages
    );
}
