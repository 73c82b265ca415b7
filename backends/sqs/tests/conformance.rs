//! The shared conformance suite against a real SQS-API server (fauxqs from scripts/brokers.sh).
//! Its binary-safety case (1,000 random payloads and headers) is `binary_round_trip_1000_random`.

use std::sync::Arc;

use mailroom_core::Backend;
use mailroom_sqs::{SqsBackend, DEFAULT_URL};
use mailroom_testkit::{local_broker, Conformance};

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let report = Conformance::new(|| async {
        Ok(Arc::new(SqsBackend::from_url(&url()).await?) as Arc<dyn Backend>)
    })
    // The report names the server scripts/brokers.sh runs, unless the URL points elsewhere.
    .broker(
        std::env::var_os("MAILROOM_SQS_URL")
            .is_none()
            .then(|| local_broker("sqs"))
            .flatten(),
    )
    .run()
    .await;
    report.print();
    report.assert_passed();
}
