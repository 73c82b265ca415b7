//! The text fuzz targets' committed inputs (`url_config`, `topic_pattern`, `omb_workload`),
//! replayed on stable through the very functions the targets run (`fuzz/src/lib.rs`, included
//! here): each seed in `fuzz/seeds/<target>` and each input a fuzz run found a crash, timeout or
//! leak with (`fuzz/regressions/<target>`) must return normally, never panic.
#![cfg(all(feature = "rabbitmq", feature = "kafka", feature = "sqs"))]

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

/// Every committed input of one kind (`seeds` or `regressions`) of `target`, with its path.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../fuzz/{kind}/{target}"));
    let Ok(dir) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    let seeds = inputs("seeds", target);
    assert!(seeds.len() >= 3, "{target}: the seed corpus is missing");
    for (path, bytes) in seeds.into_iter().chain(inputs("regressions", target)) {
        // A panic names the input through this line's context.
        eprintln!("{target}: {}", path.display());
        run(&bytes);
    }
}

#[test]
fn url_config_inputs_return_normally() {
    replay("url_config", targets::url_config);
}

#[test]
fn topic_pattern_inputs_return_normally() {
    replay("topic_pattern", targets::topic_pattern);
}

#[test]
fn omb_workload_inputs_return_normally() {
    replay("omb_workload", targets::omb_workload);
}

#[test]
fn every_url_seed_parses_under_its_scheme() {
    // The seeds are the valid URLs of each scheme, so the replay above reaches each config path.
    for (path, bytes) in inputs("seeds", "url_config") {
        let (&pick, rest) = bytes.split_first().unwrap();
        let prefix = targets::URL_PREFIXES[usize::from(pick) % targets::URL_PREFIXES.len()];
        let url = format!("{prefix}{}", String::from_utf8_lossy(rest));
        let parsed = match prefix {
            "memory://" => mailroom::memory::MemoryConfig::from_url(&url).map(drop),
            "amqp://" | "amqps://" => mailroom::rabbitmq::RabbitConfig::from_url(&url).map(drop),
            "kafka://" => mailroom::kafka::KafkaConfig::from_url(&url).map(drop),
            "sqs://" => mailroom::sqs::SqsConfig::from_url(&url).map(drop),
            _ => continue,
        };
        if let Err(e) = parsed {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn a_payload_pool_too_large_for_memory_is_a_config_error() {
    // Found while writing the omb_workload target: 10,000 random payloads of 256 MB each were
    // allocated (2.5 TB) instead of refused.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/omb_workload/payload-pool-of-2.5-TB.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let workload = mailroom_bench::workload::Workload::from_yaml(&text, "pool").unwrap();
    let err = workload.plan("pool", None).unwrap_err();
    assert_eq!(err.kind(), mailroom::ErrorKind::Config, "{err}");
    assert!(err.message().contains("randomizedPayloadPoolSize"), "{err}");
}
