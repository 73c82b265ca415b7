//! The pipeline's own counters reach the `metrics` facade (the one the backends' metrics
//! layer records through): read back from a recorder after a run, they equal the report's.

use std::sync::Arc;

use mailroom_core::{Backend, Message};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Pipeline, TestDriver, PIPELINE_METRIC_PREFIX};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;

#[tokio::test(start_paused = true)]
async fn a_finished_pipeline_publishes_its_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let mut d = TestDriver::new(backend, &["in", "out"]).await.unwrap();
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .filter("no-skip", |m: &Message| !m.payload().starts_with(b"skip"))
        .to(d.sink("out"))
        .unwrap();
    let label = pipeline.metrics().label().to_owned();
    d.start(pipeline);
    for t in ["a", "skip", "b", "c"] {
        d.pipe("in", Message::new(t)).await.unwrap();
    }
    d.run_until_idle().await;
    let report = d.shutdown().await.unwrap();
    assert_eq!((report.metrics.received, report.metrics.out), (4, 3));

    // One snapshot: reading the debugging recorder resets what it read.
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, stage: Option<&str>| -> Option<u64> {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                let labels: Vec<_> = key.key().labels().collect();
                key.kind() == MetricKind::Counter
                    && key.key().name() == name
                    && labels
                        .iter()
                        .any(|l| l.key() == "pipeline" && l.value() == label)
                    && stage
                        .is_none_or(|s| labels.iter().any(|l| l.key() == "stage" && l.value() == s))
            })
            .and_then(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => Some(*n),
                _ => None,
            })
    };
    let p = PIPELINE_METRIC_PREFIX;
    assert_eq!(counter(&format!("{p}.received"), None), Some(4));
    assert_eq!(counter(&format!("{p}.out"), None), Some(3));
    assert_eq!(counter(&format!("{p}.filtered"), None), Some(1));
    assert_eq!(
        counter(&format!("{p}.acked"), None),
        Some(report.metrics.acked)
    );
    assert_eq!(
        counter(&format!("{p}.stage.input"), Some("no-skip")),
        Some(4)
    );
}
