//! Scratch workload files for the tests that run the harness: shared by this crate's tests and
//! the CLI's (`cli/tests/bench_cli.rs` includes this file by path).

use std::path::PathBuf;

/// A fresh scratch directory.
pub fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mailroom-bench-runs-{}",
        mailroom::MessageId::generate()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A short workload: `rate` 0 is a max-rate search starting at `start`.
pub fn workload(dir: &std::path::Path, rate: u32, start: u32) -> PathBuf {
    workload_warm(dir, rate, start, 2)
}

/// The same with `warmup` seconds of warm-up (a consumer group may take seconds to form).
pub fn workload_warm(dir: &std::path::Path, rate: u32, start: u32, warmup: u32) -> PathBuf {
    let path = dir.join(format!("w-{rate}-{warmup}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: baseline {rate}\ntopics: 1\npartitionsPerTopic: 1\nmessageSize: 256\n\
             subscriptionsPerTopic: 1\nconsumerPerSubscription: 1\nproducersPerTopic: 1\n\
             producerRate: {rate}\nproducerStartRate: {start}\nacceptableBacklog: 5000\n\
             testDurationSeconds: 1.5\nwarmupDurationSeconds: {warmup}\n"
        ),
    )
    .unwrap();
    path
}
