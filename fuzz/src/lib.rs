//! The text-input fuzz targets' bodies, shared with their regression test on stable
//! (`bench/tests/fuzz_regressions.rs` includes this file): URL and config parsing for every
//! scheme, topic patterns, and the bench's OMB workload YAML. Each returns normally for any
//! input; a panic (or a failed property check) is the bug.

use mailroom::backend::parse_scheme;
use mailroom::url::{query_pairs, redact};
use mailroom::{DeliveryGuarantee, TopicPattern};
use mailroom_bench::workload::Workload;

/// The scheme prefixes the first byte of a `url_config` input picks from (the last: none).
pub const URL_PREFIXES: [&str; 6] = ["memory://", "amqp://", "amqps://", "kafka://", "sqs://", ""];

/// URL and config parsing, through the paths `connect` takes before any I/O.
///
/// Input: one byte picks the scheme prefix, the rest (as UTF-8, invalid bytes replaced) follows it.
pub fn url_config(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let prefix = URL_PREFIXES[usize::from(pick) % URL_PREFIXES.len()];
    let url = format!("{prefix}{}", String::from_utf8_lossy(rest));
    let _ = parse_scheme(&url);
    let _ = redact(&url);
    let _ = query_pairs(&url);
    if let Ok(config) = mailroom::memory::MemoryConfig::from_url(&url) {
        let _ = format!("{config:?}");
    }
    if let Ok(config) = mailroom::rabbitmq::RabbitConfig::from_url(&url) {
        let _ = format!("{config:?}");
        if config.validate().is_ok() {
            let _ = config.amqp_uri();
        }
        let _ = config.display_target();
    }
    if let Ok(config) = mailroom::kafka::KafkaConfig::from_url(&url) {
        let _ = format!("{config:?}");
        let _ = config.bootstrap_servers();
        let _ = config.max_message_size();
        let _ = config.max_in_flight();
        for guarantee in [
            DeliveryGuarantee::Confirmed,
            DeliveryGuarantee::LeaderConfirmed,
        ] {
            if config.check_guarantee(guarantee).is_ok() {
                let _ = config.producer_client_config_for(guarantee);
            }
        }
        let _ = config.consumer_client_config("fuzz");
    }
    if let Ok(config) = mailroom::sqs::SqsConfig::from_url(&url) {
        let _ = format!("{config:?}");
        let _ = config.validate();
    }
}

/// Topic patterns: parse, then match routing keys.
///
/// Input (UTF-8, invalid bytes replaced): the pattern, then routing keys, separated by NULs.
pub fn topic_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let Some(pattern) = parts.next() else {
        return;
    };
    let Ok(pattern) = TopicPattern::parse(pattern) else {
        return;
    };
    let Ok(all) = TopicPattern::parse("#") else {
        panic!("`#` does not parse");
    };
    for key in parts {
        let matched = pattern.matches(key);
        // A pattern without wildcards matches exactly the key written as it.
        if !pattern.as_str().contains(['*', '#']) {
            assert_eq!(matched, pattern.as_str() == key, "{pattern:?} vs {key:?}");
        }
        assert!(all.matches(key), "`#` does not match {key:?}");
    }
}

/// The bench's OMB workload YAML: parse, then check and plan it (the payload file is not read:
/// file paths are not what is fuzzed here).
pub fn omb_workload(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut workload) = Workload::from_yaml(text, "fuzz") else {
        return;
    };
    workload.payload_file = None;
    let _ = workload.plan("fuzz", None);
}
