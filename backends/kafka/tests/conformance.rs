//! The shared conformance suite against a real Kafka-protocol broker (tansu from
//! `scripts/brokers.sh up kafka`; `MAILROOM_KAFKA_URL` overrides `kafka://127.0.0.1:9092`).

use std::sync::Arc;

use mailroom_core::testkit::Conformance;
use mailroom_core::Backend;
use mailroom_kafka::KafkaBackend;

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_passes_on_kafka() {
    let report = Conformance::new(|| async {
        let backend = KafkaBackend::from_url(&url()).await?;
        Ok(Arc::new(backend) as Arc<dyn Backend>)
    })
    // tansu 0.6 can wedge its storage when topics are deleted while other work runs; the
    // suite's names are random, so leaving them costs nothing but disk.
    .keep_topology()
    .run()
    .await;
    report.print();
    report.assert_passed();
}
