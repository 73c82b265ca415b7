//! The shared conformance suite against a real SQS-API server (fauxqs from scripts/brokers.sh).
//! Its binary-safety case (1,000 random payloads and headers) is `binary_round_trip_1000_random`.

use mailroom_core::Registry;
use mailroom_sqs::{SqsFactory, DEFAULT_URL};
use mailroom_testkit::{local_broker, Conformance};

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    // Opened as applications open it: through the registry, inside the capability check.
    let report =
        Conformance::new(|| async { Registry::new().with(SqsFactory).connect(&url()).await })
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
