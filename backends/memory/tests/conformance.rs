//! The shared conformance suite on the in-memory broker: every case runs but replay (the memory
//! broker keeps no log of what was acked), transactions (none to offer) and the weaker delivery
//! guarantees (an enqueue is its own confirm, so there is nothing to wait less for). It runs twice: on
//! the backend as applications open it (through the registry, inside the capability check),
//! and inside a stack of every layer (capability check, retry, tracing, metrics), which must not
//! change what any case sees.

use std::sync::Arc;

use mailroom_core::layer::{CapabilityLayer, LayerStack, MetricsLayer, RetryLayer, TracingLayer};
use mailroom_core::Registry;
use mailroom_memory::{MemoryBackend, MemoryFactory};
use mailroom_testkit::Conformance;

const SKIPPED: [&str; 4] = [
    "replay_from_earliest",
    "transaction_commits_or_aborts_as_one",
    "unconfirmed_sends_arrive",
    "leader_confirmed_sends_arrive",
];

/// The two runs take turns: cases that time how consumers share a queue would otherwise compete
/// with the other run for the same two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_whole_conformance_suite() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = Conformance::new(|| async {
        Registry::new()
            .with(MemoryFactory)
            .connect("memory://")
            .await
    })
    .run()
    .await;
    report.print();
    report.assert_passed();
    report.assert_skipped_only(&SKIPPED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_inside_every_layer_passes_the_whole_conformance_suite() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = Conformance::new(|| async {
        let stack = LayerStack::new()
            .layer(TracingLayer::new())
            .layer(MetricsLayer::new().settle_durations(true))
            .layer(RetryLayer::new())
            .layer(CapabilityLayer::new());
        Ok(stack.apply(Arc::new(MemoryBackend::new())))
    })
    .run()
    .await;
    report.print();
    report.assert_passed();
    report.assert_skipped_only(&SKIPPED);
}

/// Ten copies of every case at once, each on its own backend: races between concurrent users
/// of the memory broker's shared state show up here, not in the one-at-a-time runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_whole_conformance_suite_ten_copies_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = Conformance::new(|| async {
        Registry::new()
            .with(MemoryFactory)
            .connect("memory://")
            .await
    })
    .copies(10)
    .run()
    .await;
    report.print();
    report.assert_passed();
    report.assert_skipped_only(&SKIPPED);
}
