//! The shared conformance suite on the in-memory broker: every case runs but replay (the memory
//! broker keeps no log of what was acked) and transactions (none to offer).

use std::sync::Arc;

use mailroom_core::Backend;
use mailroom_memory::MemoryBackend;
use mailroom_testkit::Conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_whole_conformance_suite() {
    let report =
        Conformance::new(|| async { Ok(Arc::new(MemoryBackend::new()) as Arc<dyn Backend>) })
            .run()
            .await;
    report.print();
    report.assert_passed();
    report.assert_skipped_only(&[
        "replay_from_earliest",
        "transaction_commits_or_aborts_as_one",
    ]);
}
