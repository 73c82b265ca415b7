//! Which broker implementation serves a local test run, as `scripts/brokers.sh` started it.
//!
//! A Kafka-protocol cluster does not tell its software version over the protocol (Apache Kafka,
//! Redpanda and tansu all answer the same requests), so reports that must name the broker as it
//! is take the name from the script that pinned and started it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The implementation and version `scripts/brokers.sh` runs for `broker` (its name there:
/// `rabbitmq`, `kafka`, `sqs`), e.g. `"Apache Kafka 4.1.1"`, or `None` when no such script is
/// found above the current directory or it is not running that broker.
pub fn local_broker(broker: &str) -> Option<String> {
    let script = brokers_script(&std::env::current_dir().ok()?)?;
    let out = Command::new("bash")
        .arg(script)
        .args(["version", broker])
        .output()
        .ok()?;
    let label = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !label.is_empty()).then_some(label)
}

/// `scripts/brokers.sh` in `start` or the nearest folder above it.
pub(crate) fn brokers_script(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join("scripts/brokers.sh"))
        .find(|script| script.is_file())
}
