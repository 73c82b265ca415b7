//! The shared conformance suite against the real RabbitMQ on 127.0.0.1:5672.

mod common;

use std::time::Duration;

use common::{within, Waypoints};
use mailroom_core::Registry;
use mailroom_rabbitmq::RabbitFactory;
use mailroom_testkit::Conformance;

/// The broker under test; `MAILROOM_RABBITMQ_URL` overrides it.
fn url() -> String {
    std::env::var("MAILROOM_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_passes_the_conformance_suite() {
    let waypoints = Waypoints::default();
    waypoints.at(
        "suite",
        "running the cases (the testkit bounds each at 120 s)",
    );
    // The suite's overall bound, far above its usual half a minute.
    within(Duration::from_secs(600), &waypoints, async {
        // Opened as applications open it: through the registry, inside the capability check.
        let report = Conformance::new(|| async {
            Registry::new().with(RabbitFactory).connect(&url()).await
        })
        .run()
        .await;
        report.print();
        report.assert_passed();
    })
    .await;
}

/// Ten copies of every case at once, each on its own connection and queues: races between
/// concurrent producers and consumers of one broker show up here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_passes_the_conformance_suite_ten_copies_at_once() {
    let waypoints = Waypoints::default();
    waypoints.at(
        "suite",
        "running ten copies of each case (the testkit bounds each at 120 s)",
    );
    within(Duration::from_secs(900), &waypoints, async {
        let report = Conformance::new(|| async {
            Registry::new().with(RabbitFactory).connect(&url()).await
        })
        .copies(10)
        .run()
        .await;
        report.print();
        report.assert_passed();
    })
    .await;
}
