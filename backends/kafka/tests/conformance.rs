//! The shared conformance suite against a real Kafka broker (Apache Kafka from
//! `scripts/brokers.sh up kafka`; `MAILROOM_KAFKA_URL` overrides `kafka://127.0.0.1:9092`).

use mailroom_core::Registry;
use mailroom_kafka::KafkaFactory;
use mailroom_testkit::{local_broker, Conformance};

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

/// The report names the broker `scripts/brokers.sh` runs, unless the URL points elsewhere.
fn implementation() -> Option<String> {
    std::env::var_os("MAILROOM_KAFKA_URL")
        .is_none()
        .then(|| local_broker("kafka"))
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_passes_on_kafka() {
    // Opened as applications open it: through the registry, inside the capability check.
    let report =
        Conformance::new(|| async { Registry::new().with(KafkaFactory).connect(&url()).await })
            .broker(implementation())
            .run()
            .await;
    report.print();
    report.assert_passed();
}
