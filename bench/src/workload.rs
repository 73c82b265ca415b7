//! Workloads in the OpenMessaging Benchmark (OMB) YAML format.
//!
//! The field names and defaults are OMB's (`Workload.java`), so OMB's own workload files load as
//! they are as long as they use the fields below; mailroom adds `testDurationSeconds` and
//! `warmupDurationSeconds` for runs shorter than a minute, and accepts a fractional
//! `consumerBacklogSizeGB` for laptop-sized backlogs. A field this harness does not implement
//! (`producerIncrementRate`, ...) is an error naming it rather than being silently ignored.
//!
//! ```yaml
//! name: 1 topic / 1 partition / 100b
//! topics: 1
//! partitionsPerTopic: 1
//! messageSize: 100
//! payloadFile: payload/payload-100b.data   # optional; relative to the workload file
//! subscriptionsPerTopic: 1
//! consumerPerSubscription: 1
//! producersPerTopic: 1
//! producerRate: 2000          # msgs/s over all producers; 0 = search the max sustainable rate
//! consumerBacklogSizeGB: 0
//! testDurationSeconds: 8      # or testDurationMinutes (OMB)
//! warmupDurationSeconds: 2    # or warmupDurationMinutes (OMB default 1)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use mailroom_core::{Error, Result};

/// How producers pick message keys (OMB's `KeyDistributorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyDistributor {
    /// No key (OMB's default).
    #[default]
    NoKey,
    /// Keys cycle through a fixed set, one per message in turn.
    KeyRoundRobin,
    /// A random key per message.
    RandomNano,
}

/// One workload, as written in its YAML file (OMB field names, OMB defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// A human name, shown in reports.
    pub name: String,
    /// Topics to create.
    #[serde(default)]
    pub topics: i64,
    /// Partitions per topic (only backends that partition can take more than 1).
    #[serde(default)]
    pub partitions_per_topic: i64,
    /// How keys are chosen.
    #[serde(default)]
    pub key_distributor: KeyDistributor,
    /// Payload size in bytes (ignored when `payloadFile` is set).
    #[serde(default)]
    pub message_size: i64,
    /// Fill payloads with random bytes instead of a constant pattern.
    #[serde(default)]
    pub use_randomized_payloads: bool,
    /// Fraction of each randomized payload that is random (the rest is zeros).
    #[serde(default)]
    pub random_bytes_ratio: f64,
    /// How many distinct randomized payloads are cycled through.
    #[serde(default)]
    pub randomized_payload_pool_size: i64,
    /// A file whose bytes are the payload, relative to the workload file.
    #[serde(default)]
    pub payload_file: Option<String>,
    /// Subscriptions per topic; each gets every message (a fanout).
    #[serde(default)]
    pub subscriptions_per_topic: i64,
    /// Producers per topic.
    #[serde(default)]
    pub producers_per_topic: i64,
    /// Consumers per subscription, sharing its messages.
    #[serde(default)]
    pub consumer_per_subscription: i64,
    /// Target publish rate over all producers, msgs/s; 0 searches the maximum sustainable rate.
    #[serde(default)]
    pub producer_rate: i64,
    /// Where the max-rate search starts (OMB default 10000).
    #[serde(default = "default_start_rate")]
    pub producer_start_rate: i64,
    /// Backlog (sent − received messages) the max-rate search tolerates (OMB default 10000).
    #[serde(default = "default_acceptable_backlog")]
    pub acceptable_backlog: i64,
    /// Build this much backlog with consumers stopped, then measure its drain (0 = no backlog).
    #[serde(default, rename = "consumerBacklogSizeGB")]
    pub consumer_backlog_size_gb: f64,
    /// Measured duration, in minutes (OMB).
    #[serde(default)]
    pub test_duration_minutes: f64,
    /// Warm-up excluded from the results, in minutes (OMB default 1).
    #[serde(default)]
    pub warmup_duration_minutes: Option<f64>,
    /// Measured duration in seconds (mailroom; instead of `testDurationMinutes`).
    #[serde(default)]
    pub test_duration_seconds: Option<f64>,
    /// Warm-up in seconds (mailroom; instead of `warmupDurationMinutes`).
    #[serde(default)]
    pub warmup_duration_seconds: Option<f64>,
}

fn default_start_rate() -> i64 {
    10_000
}

fn default_acceptable_backlog() -> i64 {
    10_000
}

/// A workload checked and turned into the numbers the runner uses.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workload as written.
    pub workload: Workload,
    /// The file it came from (for errors and reports), if any.
    pub source: String,
    /// Topics.
    pub topics: u32,
    /// Partitions per topic.
    pub partitions: u32,
    /// Subscriptions per topic.
    pub subscriptions: u32,
    /// Producers per topic.
    pub producers: u32,
    /// Consumers per subscription.
    pub consumers: u32,
    /// Target rate over all producers; `None` searches the max sustainable rate.
    pub rate: Option<u64>,
    /// Where the search starts.
    pub start_rate: u64,
    /// Backlog the search tolerates.
    pub acceptable_backlog: u64,
    /// Backlog to build before draining, in bytes (0 = none).
    pub backlog_bytes: u64,
    /// Measured duration.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// The payloads producers cycle through.
    pub payloads: Vec<Bytes>,
}

impl Plan {
    /// Payload size in bytes (of the first payload).
    pub fn message_size(&self) -> usize {
        self.payloads.first().map_or(0, |p| p.len())
    }
}

/// The most bytes a randomized payload pool may hold in all.
const MAX_PAYLOAD_POOL_BYTES: u64 = 1 << 30;

fn field_error(source: &str, field: &str, problem: impl std::fmt::Display) -> Error {
    Error::config(format!("workload {source}: field `{field}` {problem}"))
}

impl Workload {
    /// Parse a workload from YAML text; `source` names it in errors (usually the file path).
    pub fn from_yaml(text: &str, source: &str) -> Result<Workload> {
        serde_norway::from_str(text).map_err(|e| Error::config(format!("workload {source}: {e}")))
    }

    /// Load and parse a workload file.
    pub fn load(path: &Path) -> Result<Workload> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read workload {}: {e}", path.display())))?;
        Workload::from_yaml(&text, &path.display().to_string())
    }

    /// Check every field and build the run plan. `base` is the folder relative `payloadFile`
    /// paths are read from; `source` names the workload in errors.
    pub fn plan(&self, source: &str, base: Option<&Path>) -> Result<Plan> {
        let err = |field: &str, problem: String| field_error(source, field, problem);
        let at_least_one = |field: &str, value: i64| -> Result<u32> {
            if value < 1 {
                return Err(err(
                    field,
                    format!("must be at least 1, got {value} (OMB's default is 0, so set it)"),
                ));
            }
            u32::try_from(value).map_err(|_| err(field, format!("is too large: {value}")))
        };
        if self.name.trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        let topics = at_least_one("topics", self.topics)?;
        let partitions = at_least_one("partitionsPerTopic", self.partitions_per_topic)?;
        let subscriptions = at_least_one("subscriptionsPerTopic", self.subscriptions_per_topic)?;
        let producers = at_least_one("producersPerTopic", self.producers_per_topic)?;
        let consumers = at_least_one("consumerPerSubscription", self.consumer_per_subscription)?;
        if self.producer_rate < 0 {
            return Err(err(
                "producerRate",
                format!(
                    "must be a rate in msgs/s, or 0 to search the max sustainable rate; got {}",
                    self.producer_rate
                ),
            ));
        }
        let rate = (self.producer_rate > 0).then_some(self.producer_rate as u64);
        if self.producer_start_rate < 1 {
            return Err(err(
                "producerStartRate",
                format!("must be at least 1, got {}", self.producer_start_rate),
            ));
        }
        if self.acceptable_backlog < 1 {
            return Err(err(
                "acceptableBacklog",
                format!("must be at least 1, got {}", self.acceptable_backlog),
            ));
        }
        if !(self.consumer_backlog_size_gb.is_finite() && self.consumer_backlog_size_gb >= 0.0) {
            return Err(err(
                "consumerBacklogSizeGB",
                format!(
                    "must be 0 or a positive size, got {}",
                    self.consumer_backlog_size_gb
                ),
            ));
        }
        let backlog_bytes = (self.consumer_backlog_size_gb * 1e9) as u64;
        if backlog_bytes > 0 && rate.is_none() {
            return Err(err(
                "consumerBacklogSizeGB",
                "needs a fixed producerRate (a backlog drain cannot be combined with the max-rate search)".into(),
            ));
        }
        let duration = duration_of(
            source,
            ("testDurationMinutes", self.test_duration_minutes),
            ("testDurationSeconds", self.test_duration_seconds),
            true,
        )?;
        let warmup = duration_of(
            source,
            (
                "warmupDurationMinutes",
                // OMB's default warm-up is one minute when neither field is given.
                self.warmup_duration_minutes
                    .unwrap_or(if self.warmup_duration_seconds.is_some() {
                        0.0
                    } else {
                        1.0
                    }),
            ),
            ("warmupDurationSeconds", self.warmup_duration_seconds),
            false,
        )?;
        if self.warmup_duration_minutes.is_some() && self.warmup_duration_seconds.is_some() {
            return Err(err(
                "warmupDurationSeconds",
                "cannot be combined with warmupDurationMinutes; keep one".into(),
            ));
        }
        let payloads = self.payloads(source, base)?;
        Ok(Plan {
            workload: self.clone(),
            source: source.to_owned(),
            topics,
            partitions,
            subscriptions,
            producers,
            consumers,
            rate,
            start_rate: self.producer_start_rate as u64,
            acceptable_backlog: self.acceptable_backlog as u64,
            backlog_bytes,
            duration,
            warmup,
            payloads,
        })
    }

    fn payloads(&self, source: &str, base: Option<&Path>) -> Result<Vec<Bytes>> {
        let err = |field: &str, problem: String| field_error(source, field, problem);
        if let Some(file) = &self.payload_file {
            let mut path = PathBuf::from(file);
            if path.is_relative() {
                if let Some(base) = base {
                    path = base.join(path);
                }
            }
            let bytes = std::fs::read(&path).map_err(|e| {
                err(
                    "payloadFile",
                    format!("cannot be read ({}): {e}", path.display()),
                )
            })?;
            if bytes.is_empty() {
                return Err(err("payloadFile", format!("{} is empty", path.display())));
            }
            return Ok(vec![Bytes::from(bytes)]);
        }
        if self.message_size < 1 {
            return Err(err(
                "messageSize",
                format!(
                    "must be at least 1 byte (or set payloadFile), got {}",
                    self.message_size
                ),
            ));
        }
        let size = usize::try_from(self.message_size)
            .ok()
            .filter(|s| *s <= 256 * 1024 * 1024)
            .ok_or_else(|| {
                err(
                    "messageSize",
                    format!("is too large: {}", self.message_size),
                )
            })?;
        if !self.use_randomized_payloads {
            return Ok(vec![Bytes::from(vec![b'm'; size])]);
        }
        if !(0.0..=1.0).contains(&self.random_bytes_ratio) {
            return Err(err(
                "randomBytesRatio",
                format!("must be between 0 and 1, got {}", self.random_bytes_ratio),
            ));
        }
        let pool = self.randomized_payload_pool_size;
        if !(1..=10_000).contains(&pool) {
            return Err(err(
                "randomizedPayloadPoolSize",
                format!(
                    "must be between 1 and 10000 when useRandomizedPayloads is set, got {pool}"
                ),
            ));
        }
        // The whole pool is built before the run, so it is its total that must fit in memory:
        // 10,000 payloads of the largest size allowed would be 2.5 TB.
        let total = (size as u64).saturating_mul(pool as u64);
        if total > MAX_PAYLOAD_POOL_BYTES {
            return Err(err(
                "randomizedPayloadPoolSize",
                format!(
                    "{pool} payloads of {size} bytes are {total} bytes; the pool may hold at \
                     most {MAX_PAYLOAD_POOL_BYTES} (1 GiB)"
                ),
            ));
        }
        let random = (size as f64 * self.random_bytes_ratio) as usize;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        Ok((0..pool)
            .map(|_| {
                let mut payload = vec![0u8; size];
                for byte in payload.iter_mut().take(random) {
                    // xorshift: payload bytes only need to defeat compression, not be secure.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *byte = state as u8;
                }
                Bytes::from(payload)
            })
            .collect())
    }
}

fn duration_of(
    source: &str,
    minutes: (&str, f64),
    seconds: (&str, Option<f64>),
    required: bool,
) -> Result<Duration> {
    let check = |field: &str, value: f64| -> Result<f64> {
        if !(value.is_finite() && value >= 0.0) {
            return Err(field_error(
                source,
                field,
                format!("must be a positive duration, got {value}"),
            ));
        }
        Ok(value)
    };
    let secs = match seconds.1 {
        Some(s) => {
            if minutes.1 != 0.0 && required {
                return Err(field_error(
                    source,
                    seconds.0,
                    format!("cannot be combined with {}; keep one", minutes.0),
                ));
            }
            check(seconds.0, s)?
        }
        None => check(minutes.0, minutes.1)? * 60.0,
    };
    if required && secs <= 0.0 {
        return Err(field_error(
            source,
            minutes.0,
            format!(
                "(or {}) must give a duration above zero; neither was set",
                seconds.0
            ),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Load and plan a workload file.
pub fn load_plan(path: &Path) -> Result<Plan> {
    let workload = Workload::load(path)?;
    workload.plan(&path.display().to_string(), path.parent())
}

/// The workloads shipped in `bench/workloads/` (compiled in, so `compare` works from any folder),
/// as (file name, YAML text).
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "1-topic-1-partition-100b.yaml",
        include_str!("../workloads/1-topic-1-partition-100b.yaml"),
    ),
    (
        "1-topic-1-partition-1kb.yaml",
        include_str!("../workloads/1-topic-1-partition-1kb.yaml"),
    ),
    (
        "1-topic-16-partitions-1kb.yaml",
        include_str!("../workloads/1-topic-16-partitions-1kb.yaml"),
    ),
    (
        "max-rate-1-topic-1-partition-1kb.yaml",
        include_str!("../workloads/max-rate-1-topic-1-partition-1kb.yaml"),
    ),
    (
        "backlog-drain-1-topic-1-partition-1kb.yaml",
        include_str!("../workloads/backlog-drain-1-topic-1-partition-1kb.yaml"),
    ),
];

/// Plans for the built-in workloads, in order.
pub fn builtin_plans() -> Result<Vec<Plan>> {
    BUILTIN
        .iter()
        .map(|(file, text)| {
            let source = format!("bench/workloads/{file}");
            Workload::from_yaml(text, &source)?.plan(&source, None)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: t\ntopics: 1\npartitionsPerTopic: 1\nmessageSize: 100\nsubscriptionsPerTopic: 1\nconsumerPerSubscription: 1\nproducersPerTopic: 1\nproducerRate: 100\ntestDurationSeconds: 1\nwarmupDurationSeconds: 0\n";

    #[test]
    fn builtin_workloads_plan() {
        let plans = builtin_plans().unwrap();
        assert_eq!(plans.len(), BUILTIN.len());
    }

    #[test]
    fn omb_defaults_apply() {
        let text = GOOD.replace("warmupDurationSeconds: 0\n", "");
        let w = Workload::from_yaml(&text, "t.yaml").unwrap();
        assert_eq!(w.key_distributor, KeyDistributor::NoKey);
        assert_eq!(w.producer_start_rate, 10_000);
        let plan = w.plan("t.yaml", None).unwrap();
        assert_eq!(plan.warmup, Duration::from_secs(60));
    }

    #[test]
    fn unknown_field_is_named() {
        let text = format!("{GOOD}producerIncrementRate: 5\n");
        let e = Workload::from_yaml(&text, "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.yaml") && e.contains("producerIncrementRate"),
            "{e}"
        );
    }

    #[test]
    fn negative_rate_is_named() {
        let text = GOOD.replace("producerRate: 100", "producerRate: -5");
        let e = Workload::from_yaml(&text, "x.yaml")
            .unwrap()
            .plan("x.yaml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.yaml") && e.contains("producerRate"), "{e}");
    }
}
