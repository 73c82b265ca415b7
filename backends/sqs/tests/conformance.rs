//! The shared conformance suite against a real SQS-API server (fauxqs from scripts/brokers.sh).

use std::sync::Arc;

use mailroom_core::testkit::Conformance;
use mailroom_core::Backend;
use mailroom_sqs::{SqsBackend, DEFAULT_URL};

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let report = Conformance::new(|| async {
        Ok(Arc::new(SqsBackend::from_url(&url()).await?) as Arc<dyn Backend>)
    })
    .run()
    .await;
    report.print();
    report.assert_passed();
}
