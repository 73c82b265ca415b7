//! A run's result, serialized with OMB's `TestResult` field names and units (publish and
//! end-to-end latency in milliseconds, publish delay in microseconds), so OMB's chart tooling
//! reads it; mailroom's own additions sit under `mailroom`.

use crate::summary::ms;
use std::collections::BTreeMap;

pub mod scaling;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles the quantile maps and the report's latency curves carry.
pub const QUANTILES: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 99.999, 100.0,
];

/// One histogram summarised the way OMB's result fields want it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Mean.
    pub avg: f64,
    /// p50.
    pub p50: f64,
    /// p75.
    pub p75: f64,
    /// p95.
    pub p95: f64,
    /// p99.
    pub p99: f64,
    /// p99.9.
    pub p999: f64,
    /// p99.99.
    pub p9999: f64,
    /// p99.999.
    pub p99999: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// Summarise a microsecond histogram, dividing every value by `scale` (1000 for ms).
    pub fn of(h: &Histogram<u64>, scale: f64) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |p: f64| h.value_at_quantile(p) as f64 / scale;
        Percentiles {
            avg: h.mean() / scale,
            p50: q(0.50),
            p75: q(0.75),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            p99999: q(0.99999),
            max: h.max() as f64 / scale,
        }
    }
}

/// The quantile map of a microsecond histogram, values divided by `scale`.
pub fn quantile_map(h: &Histogram<u64>, scale: f64) -> BTreeMap<String, f64> {
    if h.is_empty() {
        return BTreeMap::new();
    }
    QUANTILES
        .iter()
        .map(|p| {
            let v = if *p >= 100.0 {
                h.max()
            } else {
                h.value_at_quantile(p / 100.0)
            };
            (format!("{p}"), v as f64 / scale)
        })
        .collect()
}

/// A run's result: OMB's `TestResult` fields plus `mailroom`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct TestResult {
    pub workload: String,
    pub driver: String,
    pub message_size: u64,
    pub topics: u32,
    pub partitions: u32,
    pub producers_per_topic: u32,
    pub consumers_per_topic: u32,

    pub publish_rate: Vec<f64>,
    pub publish_error_rate: Vec<f64>,
    pub consume_rate: Vec<f64>,
    pub backlog: Vec<i64>,

    pub publish_latency_avg: Vec<f64>,
    #[serde(rename = "publishLatency50pct")]
    pub publish_latency_50pct: Vec<f64>,
    #[serde(rename = "publishLatency75pct")]
    pub publish_latency_75pct: Vec<f64>,
    #[serde(rename = "publishLatency95pct")]
    pub publish_latency_95pct: Vec<f64>,
    #[serde(rename = "publishLatency99pct")]
    pub publish_latency_99pct: Vec<f64>,
    #[serde(rename = "publishLatency999pct")]
    pub publish_latency_999pct: Vec<f64>,
    #[serde(rename = "publishLatency9999pct")]
    pub publish_latency_9999pct: Vec<f64>,
    #[serde(rename = "publishLatency99999pct")]
    pub publish_latency_99999pct: Vec<f64>,
    pub publish_latency_max: Vec<f64>,

    pub publish_delay_latency_avg: Vec<f64>,
    #[serde(rename = "publishDelayLatency50pct")]
    pub publish_delay_latency_50pct: Vec<u64>,
    #[serde(rename = "publishDelayLatency75pct")]
    pub publish_delay_latency_75pct: Vec<u64>,
    #[serde(rename = "publishDelayLatency95pct")]
    pub publish_delay_latency_95pct: Vec<u64>,
    #[serde(rename = "publishDelayLatency99pct")]
    pub publish_delay_latency_99pct: Vec<u64>,
    #[serde(rename = "publishDelayLatency999pct")]
    pub publish_delay_latency_999pct: Vec<u64>,
    #[serde(rename = "publishDelayLatency9999pct")]
    pub publish_delay_latency_9999pct: Vec<u64>,
    #[serde(rename = "publishDelayLatency99999pct")]
    pub publish_delay_latency_99999pct: Vec<u64>,
    pub publish_delay_latency_max: Vec<u64>,

    pub aggregated_publish_latency_avg: f64,
    #[serde(rename = "aggregatedPublishLatency50pct")]
    pub aggregated_publish_latency_50pct: f64,
    #[serde(rename = "aggregatedPublishLatency75pct")]
    pub aggregated_publish_latency_75pct: f64,
    #[serde(rename = "aggregatedPublishLatency95pct")]
    pub aggregated_publish_latency_95pct: f64,
    #[serde(rename = "aggregatedPublishLatency99pct")]
    pub aggregated_publish_latency_99pct: f64,
    #[serde(rename = "aggregatedPublishLatency999pct")]
    pub aggregated_publish_latency_999pct: f64,
    #[serde(rename = "aggregatedPublishLatency9999pct")]
    pub aggregated_publish_latency_9999pct: f64,
    #[serde(rename = "aggregatedPublishLatency99999pct")]
    pub aggregated_publish_latency_99999pct: f64,
    pub aggregated_publish_latency_max: f64,

    pub aggregated_publish_delay_latency_avg: f64,
    #[serde(rename = "aggregatedPublishDelayLatency50pct")]
    pub aggregated_publish_delay_latency_50pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency75pct")]
    pub aggregated_publish_delay_latency_75pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency95pct")]
    pub aggregated_publish_delay_latency_95pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency99pct")]
    pub aggregated_publish_delay_latency_99pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency999pct")]
    pub aggregated_publish_delay_latency_999pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency9999pct")]
    pub aggregated_publish_delay_latency_9999pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency99999pct")]
    pub aggregated_publish_delay_latency_99999pct: u64,
    pub aggregated_publish_delay_latency_max: u64,

    pub aggregated_publish_latency_quantiles: BTreeMap<String, f64>,
    pub aggregated_publish_delay_latency_quantiles: BTreeMap<String, f64>,

    pub end_to_end_latency_avg: Vec<f64>,
    #[serde(rename = "endToEndLatency50pct")]
    pub end_to_end_latency_50pct: Vec<f64>,
    #[serde(rename = "endToEndLatency75pct")]
    pub end_to_end_latency_75pct: Vec<f64>,
    #[serde(rename = "endToEndLatency95pct")]
    pub end_to_end_latency_95pct: Vec<f64>,
    #[serde(rename = "endToEndLatency99pct")]
    pub end_to_end_latency_99pct: Vec<f64>,
    #[serde(rename = "endToEndLatency999pct")]
    pub end_to_end_latency_999pct: Vec<f64>,
    #[serde(rename = "endToEndLatency9999pct")]
    pub end_to_end_latency_9999pct: Vec<f64>,
    #[serde(rename = "endToEndLatency99999pct")]
    pub end_to_end_latency_99999pct: Vec<f64>,
    pub end_to_end_latency_max: Vec<f64>,

    pub aggregated_end_to_end_latency_quantiles: BTreeMap<String, f64>,

    pub aggregated_end_to_end_latency_avg: f64,
    #[serde(rename = "aggregatedEndToEndLatency50pct")]
    pub aggregated_end_to_end_latency_50pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency75pct")]
    pub aggregated_end_to_end_latency_75pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency95pct")]
    pub aggregated_end_to_end_latency_95pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency99pct")]
    pub aggregated_end_to_end_latency_99pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency999pct")]
    pub aggregated_end_to_end_latency_999pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency9999pct")]
    pub aggregated_end_to_end_latency_9999pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency99999pct")]
    pub aggregated_end_to_end_latency_99999pct: f64,
    pub aggregated_end_to_end_latency_max: f64,

    /// What OMB does not have.
    pub mailroom: Extra,
}

/// mailroom's additions to the OMB result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extra {
    /// The workload file.
    pub workload_file: String,
    /// The broker URL (redacted) or the raw driver's name.
    pub url: String,
    /// The broker's implementation and version, as it reported them.
    pub server_version: String,
    /// The target rate of the measured run (msgs/s over all producers); for a max-rate
    /// workload, the rate the search found.
    pub target_rate: f64,
    /// Seconds measured (the warm-up excluded).
    pub measured_seconds: f64,
    /// Messages confirmed in the measured run.
    pub messages_sent: u64,
    /// Messages received in the measured run (every subscription counted).
    pub messages_received: u64,
    /// Sends that failed in the measured run.
    pub send_errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Mean publish rate of the measured run, msgs/s.
    pub publish_rate_avg: f64,
    /// Mean consume rate of the measured run, msgs/s.
    pub consume_rate_avg: f64,
    /// The max-rate search: (seconds since start, target rate tried, backlog) per step.
    pub rate_search: Vec<(f64, f64, i64)>,
    /// For a max-rate workload (`producerRate: 0`): what the search concluded.
    pub max_rate: Option<MaxRate>,
    /// This run against its raw-client baseline's run of the same workload, when one ran.
    pub baseline: Option<BaselineRatio>,
    /// This run against a peer library's run of the same workload (`peer+URL`), when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<BaselineRatio>,
    /// Backlog over the whole run, sampled: (seconds since start, messages).
    pub backlog_series: Vec<(f64, i64)>,
    /// For a backlog workload: seconds from the consumers' start until the backlog was gone.
    pub drain_seconds: Option<f64>,
    /// For a backlog workload: the backlog the consumers started from, in messages.
    pub drain_from: Option<i64>,
    /// Seconds between periodic stats.
    pub stats_interval_seconds: f64,
    /// Subscriptions per topic (each receives every message).
    pub subscriptions: u32,
}

/// What a max-rate search (`producerRate: 0`) concluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "outcome",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum MaxRate {
    /// A step was sustained (producers hit the rate, consumers kept pace, the backlog stayed
    /// under `acceptableBacklog`); the measured run held the highest such rate.
    Found {
        /// The rate held, msgs/s over all producers.
        rate: f64,
    },
    /// No step was sustained, down to the lowest the search tried; the measured run held
    /// that lowest step, so its numbers show what the broker does there.
    NotFound {
        /// The lowest rate tried, msgs/s over all producers.
        lowest_step: f64,
        /// What failed at that step (producers short of the rate, consumers behind, backlog).
        reason: String,
    },
}

/// A backend's run against its raw-client baseline's run of the same workload, on the same
/// broker in the same process and comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineRatio {
    /// The raw driver (`raw-lapin`, `raw-rdkafka`, `raw-sqs`, `raw-mpsc`).
    pub raw_driver: String,
    /// Messages per second the backend moved end to end (the lower of publish and consume);
    /// with paired saturation steps (`paired`), the backend's figure in the median pair.
    pub rate: f64,
    /// The same for the raw baseline.
    pub raw_rate: f64,
    /// `rate / raw_rate`: 1.0 means the abstraction costs nothing. `None` when a ratio would
    /// mislead (see `note`).
    pub ratio: Option<f64>,
    /// Why there is no ratio (a max-rate search that found no sustainable rate).
    pub note: Option<String>,
    /// End-to-end p99 of the backend's run, ms.
    pub e2e_p99: f64,
    /// End-to-end p99 of the raw run, ms.
    pub raw_e2e_p99: f64,
    /// With several alternating rounds (backend, raw, raw, backend, ...): each round pair's
    /// ratio, in order; `ratio` is then the median backend rate over the median raw rate.
    /// With paired saturation steps (`paired`): each pair's ratio.
    #[serde(default)]
    pub round_ratios: Vec<f64>,
    /// The rates and ratio are from paired closed-loop saturation steps (the backend's and the
    /// raw baseline's runs live at once, a step of each in turn; see `runner::paired_max_rate`),
    /// not from the workload's runs: `ratio` is the median pair's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paired: bool,
}

impl BaselineRatio {
    /// Compare a backend's result with its baseline's result of the same workload. A ratio of
    /// throughputs is only given where both sustained what they were asked: for a max-rate
    /// workload, both searches found a rate.
    pub fn of(backend: &TestResult, raw: &TestResult) -> BaselineRatio {
        let moved = |r: &TestResult| r.mailroom.publish_rate_avg.min(r.mailroom.consume_rate_avg);
        let not_found = |r: &TestResult| match &r.mailroom.max_rate {
            Some(MaxRate::NotFound { .. }) => {
                r.max_rate_text().map(|t| format!("{}: {t}", r.driver))
            }
            _ => None,
        };
        let note = match (not_found(backend), not_found(raw)) {
            (None, None) if moved(raw) <= 0.0 => Some(format!("{} moved nothing", raw.driver)),
            (None, None) => None,
            (a, b) => Some(a.into_iter().chain(b).collect::<Vec<_>>().join("; ")),
        };
        BaselineRatio {
            raw_driver: raw.driver.clone(),
            rate: moved(backend),
            raw_rate: moved(raw),
            ratio: note.is_none().then(|| moved(backend) / moved(raw)),
            note,
            e2e_p99: backend.aggregated_end_to_end_latency_99pct,
            raw_e2e_p99: raw.aggregated_end_to_end_latency_99pct,
            round_ratios: Vec::new(),
            paired: false,
        }
    }

    /// The rates and ratio taken from paired saturation steps instead (`runner::Paired`):
    /// each side's figure in the median pair, and each pair's ratio for the spread. The
    /// latencies stay the workload's runs'.
    pub fn with_paired(mut self, rate: f64, raw_rate: f64, round_ratios: Vec<f64>) -> Self {
        self.rate = rate;
        self.raw_rate = raw_rate;
        self.ratio = (raw_rate > 0.0).then(|| rate / raw_rate);
        self.note = None;
        self.round_ratios = round_ratios;
        self.paired = true;
        self
    }

    /// Several rounds of the same workload, backend and raw alternating: the first pair's
    /// figures, with the rates replaced by the medians over the rounds whose pair gave a ratio
    /// and each such pair's ratio kept, so the report can show the spread.
    pub fn of_rounds(pairs: &[(&TestResult, &TestResult)]) -> Option<BaselineRatio> {
        let (first_backend, first_raw) = pairs.first()?;
        let mut out = BaselineRatio::of(first_backend, first_raw);
        let each: Vec<BaselineRatio> = pairs.iter().map(|(b, r)| BaselineRatio::of(b, r)).collect();
        let valid: Vec<&BaselineRatio> = each.iter().filter(|r| r.ratio.is_some()).collect();
        if valid.len() < 2 {
            return Some(out);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        out.rate = median(valid.iter().map(|r| r.rate).collect());
        out.raw_rate = median(valid.iter().map(|r| r.raw_rate).collect());
        out.ratio = Some(out.rate / out.raw_rate);
        out.note = None;
        out.round_ratios = valid.iter().filter_map(|r| r.ratio).collect();
        Some(out)
    }

    /// The lowest and highest round ratio, when there were several rounds.
    pub fn spread(&self) -> Option<(f64, f64)> {
        if self.round_ratios.len() < 2 {
            return None;
        }
        let lo = self
            .round_ratios
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let hi = self
            .round_ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        Some((lo, hi))
    }

    /// The ratio as text, with the spread over rounds when there were several:
    /// `0.912 (rounds 0.890–0.934)`.
    pub fn ratio_text(&self) -> Option<String> {
        let ratio = self.ratio?;
        if self.paired {
            let n = self.round_ratios.len();
            let pairs = if n == 1 { "pair" } else { "pairs" };
            return Some(match self.spread() {
                Some((lo, hi)) => {
                    format!("{ratio:.3} (pairs {lo:.3}–{hi:.3}, {n} {pairs} of saturation steps)")
                }
                None => format!("{ratio:.3} ({n} {pairs} of saturation steps)"),
            });
        }
        Some(match self.spread() {
            Some((lo, hi)) => format!(
                "{ratio:.3} (rounds {lo:.3}–{hi:.3}, {} pairs)",
                self.round_ratios.len()
            ),
            None => format!("{ratio:.3}"),
        })
    }

    /// The printed line: `mailroom vs raw: <backend> N msgs/s vs <raw> M msgs/s, ratio R ...`.
    pub fn line(&self, backend: &str, workload: &str) -> String {
        let ratio = match (self.ratio_text(), &self.note) {
            (Some(r), _) => format!("ratio {r}"),
            (None, Some(note)) => format!("no ratio: {note}"),
            (None, None) => "no ratio".to_owned(),
        };
        format!(
            "mailroom vs raw: {backend} {:.0} msgs/s vs {} {:.0} msgs/s, {ratio}; e2e p99 {} ms vs {} ms ({workload})",
            self.rate,
            self.raw_driver,
            self.raw_rate,
            ms(self.e2e_p99),
            ms(self.raw_e2e_p99),
        )
    }
}

impl TestResult {
    /// Append one periodic sample (histograms in microseconds).
    #[allow(clippy::too_many_arguments)]
    pub fn push_period(
        &mut self,
        publish_rate: f64,
        error_rate: f64,
        consume_rate: f64,
        backlog: i64,
        publish: &Histogram<u64>,
        delay: &Histogram<u64>,
        e2e: &Histogram<u64>,
    ) {
        self.publish_rate.push(publish_rate);
        self.publish_error_rate.push(error_rate);
        self.consume_rate.push(consume_rate);
        self.backlog.push(backlog);
        let p = Percentiles::of(publish, 1000.0);
        self.publish_latency_avg.push(p.avg);
        self.publish_latency_50pct.push(p.p50);
        self.publish_latency_75pct.push(p.p75);
        self.publish_latency_95pct.push(p.p95);
        self.publish_latency_99pct.push(p.p99);
        self.publish_latency_999pct.push(p.p999);
        self.publish_latency_9999pct.push(p.p9999);
        self.publish_latency_99999pct.push(p.p99999);
        self.publish_latency_max.push(p.max);
        let d = Percentiles::of(delay, 1.0);
        self.publish_delay_latency_avg.push(d.avg);
        self.publish_delay_latency_50pct.push(d.p50 as u64);
        self.publish_delay_latency_75pct.push(d.p75 as u64);
        self.publish_delay_latency_95pct.push(d.p95 as u64);
        self.publish_delay_latency_99pct.push(d.p99 as u64);
        self.publish_delay_latency_999pct.push(d.p999 as u64);
        self.publish_delay_latency_9999pct.push(d.p9999 as u64);
        self.publish_delay_latency_99999pct.push(d.p99999 as u64);
        self.publish_delay_latency_max.push(d.max as u64);
        let e = Percentiles::of(e2e, 1000.0);
        self.end_to_end_latency_avg.push(e.avg);
        self.end_to_end_latency_50pct.push(e.p50);
        self.end_to_end_latency_75pct.push(e.p75);
        self.end_to_end_latency_95pct.push(e.p95);
        self.end_to_end_latency_99pct.push(e.p99);
        self.end_to_end_latency_999pct.push(e.p999);
        self.end_to_end_latency_9999pct.push(e.p9999);
        self.end_to_end_latency_99999pct.push(e.p99999);
        self.end_to_end_latency_max.push(e.max);
    }

    /// Fill the aggregated fields from the whole measured run's histograms (microseconds).
    pub fn set_aggregates(
        &mut self,
        publish: &Histogram<u64>,
        delay: &Histogram<u64>,
        e2e: &Histogram<u64>,
    ) {
        let p = Percentiles::of(publish, 1000.0);
        self.aggregated_publish_latency_avg = p.avg;
        self.aggregated_publish_latency_50pct = p.p50;
        self.aggregated_publish_latency_75pct = p.p75;
        self.aggregated_publish_latency_95pct = p.p95;
        self.aggregated_publish_latency_99pct = p.p99;
        self.aggregated_publish_latency_999pct = p.p999;
        self.aggregated_publish_latency_9999pct = p.p9999;
        self.aggregated_publish_latency_99999pct = p.p99999;
        self.aggregated_publish_latency_max = p.max;
        self.aggregated_publish_latency_quantiles = quantile_map(publish, 1000.0);
        let d = Percentiles::of(delay, 1.0);
        self.aggregated_publish_delay_latency_avg = d.avg;
        self.aggregated_publish_delay_latency_50pct = d.p50 as u64;
        self.aggregated_publish_delay_latency_75pct = d.p75 as u64;
        self.aggregated_publish_delay_latency_95pct = d.p95 as u64;
        self.aggregated_publish_delay_latency_99pct = d.p99 as u64;
        self.aggregated_publish_delay_latency_999pct = d.p999 as u64;
        self.aggregated_publish_delay_latency_9999pct = d.p9999 as u64;
        self.aggregated_publish_delay_latency_99999pct = d.p99999 as u64;
        self.aggregated_publish_delay_latency_max = d.max as u64;
        self.aggregated_publish_delay_latency_quantiles = quantile_map(delay, 1.0);
        let e = Percentiles::of(e2e, 1000.0);
        self.aggregated_end_to_end_latency_avg = e.avg;
        self.aggregated_end_to_end_latency_50pct = e.p50;
        self.aggregated_end_to_end_latency_75pct = e.p75;
        self.aggregated_end_to_end_latency_95pct = e.p95;
        self.aggregated_end_to_end_latency_99pct = e.p99;
        self.aggregated_end_to_end_latency_999pct = e.p999;
        self.aggregated_end_to_end_latency_9999pct = e.p9999;
        self.aggregated_end_to_end_latency_99999pct = e.p99999;
        self.aggregated_end_to_end_latency_max = e.max;
        self.aggregated_end_to_end_latency_quantiles = quantile_map(e2e, 1000.0);
    }

    /// For a max-rate workload, the search's conclusion as a sentence: `found 2151 msgs/s`, or
    /// `no sustainable rate found (lowest step 100 msgs/s: ...; e2e p99 ... ms there)`.
    pub fn max_rate_text(&self) -> Option<String> {
        Some(match self.mailroom.max_rate.as_ref()? {
            MaxRate::Found { rate } => format!("found {rate:.0} msgs/s"),
            MaxRate::NotFound {
                lowest_step,
                reason,
            } => format!(
                "no sustainable rate found (lowest step {lowest_step:.0} msgs/s: {reason}; e2e p99 {} ms there)",
                ms(self.aggregated_end_to_end_latency_99pct)
            ),
        })
    }

    /// Whether this is a max-rate run whose search found no sustainable rate.
    pub fn no_sustainable_rate(&self) -> bool {
        matches!(self.mailroom.max_rate, Some(MaxRate::NotFound { .. }))
    }

    /// The aggregated end-to-end percentiles, in ms.
    pub fn end_to_end(&self) -> Percentiles {
        Percentiles {
            avg: self.aggregated_end_to_end_latency_avg,
            p50: self.aggregated_end_to_end_latency_50pct,
            p75: self.aggregated_end_to_end_latency_75pct,
            p95: self.aggregated_end_to_end_latency_95pct,
            p99: self.aggregated_end_to_end_latency_99pct,
            p999: self.aggregated_end_to_end_latency_999pct,
            p9999: self.aggregated_end_to_end_latency_9999pct,
            p99999: self.aggregated_end_to_end_latency_99999pct,
            max: self.aggregated_end_to_end_latency_max,
        }
    }

    /// The aggregated publish percentiles, in ms.
    pub fn publish(&self) -> Percentiles {
        Percentiles {
            avg: self.aggregated_publish_latency_avg,
            p50: self.aggregated_publish_latency_50pct,
            p75: self.aggregated_publish_latency_75pct,
            p95: self.aggregated_publish_latency_95pct,
            p99: self.aggregated_publish_latency_99pct,
            p999: self.aggregated_publish_latency_999pct,
            p9999: self.aggregated_publish_latency_9999pct,
            p99999: self.aggregated_publish_latency_99999pct,
            max: self.aggregated_publish_latency_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(driver: &str, publish: f64, consume: f64, max_rate: Option<MaxRate>) -> TestResult {
        let mut r = TestResult {
            driver: driver.into(),
            aggregated_end_to_end_latency_99pct: 12.5,
            ..TestResult::default()
        };
        r.mailroom.publish_rate_avg = publish;
        r.mailroom.consume_rate_avg = consume;
        r.mailroom.max_rate = max_rate;
        r
    }

    #[test]
    fn ratio_of_messages_moved_end_to_end() {
        let backend = run(
            "rabbitmq",
            900.0,
            800.0,
            Some(MaxRate::Found { rate: 900.0 }),
        );
        let raw = run(
            "raw-lapin",
            1000.0,
            1000.0,
            Some(MaxRate::Found { rate: 1000.0 }),
        );
        let r = BaselineRatio::of(&backend, &raw);
        assert_eq!(r.ratio, Some(0.8));
        assert_eq!((r.rate, r.raw_rate), (800.0, 1000.0));
        let line = r.line("rabbitmq", "w");
        assert!(
            line.starts_with(
                "mailroom vs raw: rabbitmq 800 msgs/s vs raw-lapin 1000 msgs/s, ratio 0.800;"
            ),
            "{line}"
        );
    }

    #[test]
    fn rounds_give_the_median_ratio_and_its_spread() {
        let found = |rate: f64| Some(MaxRate::Found { rate });
        let b1 = run("rabbitmq", 900.0, 900.0, found(900.0));
        let r1 = run("raw-lapin", 1000.0, 1000.0, found(1000.0));
        let b2 = run("rabbitmq", 1100.0, 1100.0, found(1100.0));
        let r2 = run("raw-lapin", 1000.0, 1000.0, found(1000.0));
        let r = BaselineRatio::of_rounds(&[(&b1, &r1), (&b2, &r2)]).unwrap();
        assert_eq!((r.rate, r.raw_rate), (1000.0, 1000.0));
        assert_eq!(r.ratio, Some(1.0));
        assert_eq!(r.round_ratios, vec![0.9, 1.1]);
        assert_eq!(r.spread(), Some((0.9, 1.1)));
        let line = r.line("rabbitmq", "w");
        assert!(
            line.contains("ratio 1.000 (rounds 0.900–1.100, 2 pairs)"),
            "{line}"
        );
        // One round: no spread, the plain ratio.
        let one = BaselineRatio::of_rounds(&[(&b1, &r1)]).unwrap();
        assert_eq!(
            (one.spread(), one.ratio_text()),
            (None, Some("0.900".into()))
        );
        // A pair without a ratio is left out of the medians.
        let stuck = run(
            "rabbitmq",
            10.0,
            10.0,
            Some(MaxRate::NotFound {
                lowest_step: 100.0,
                reason: "backlog".into(),
            }),
        );
        let r = BaselineRatio::of_rounds(&[(&b1, &r1), (&stuck, &r2), (&b2, &r2)]).unwrap();
        assert_eq!(r.round_ratios, vec![0.9, 1.1]);
    }

    #[test]
    fn paired_searches_give_their_rates_and_rounds() {
        let found = |rate: f64| Some(MaxRate::Found { rate });
        let b = run("rabbitmq", 900.0, 900.0, found(900.0));
        let r = run("raw-lapin", 1000.0, 1000.0, found(1000.0));
        let paired = BaselineRatio::of(&b, &r).with_paired(850.0, 1000.0, vec![0.8, 0.85, 0.9]);
        assert_eq!(paired.ratio, Some(0.85));
        assert!(paired.paired);
        let line = paired.line("rabbitmq", "w");
        assert!(
            line.contains(
                "rabbitmq 850 msgs/s vs raw-lapin 1000 msgs/s, ratio 0.850 (pairs 0.800–0.900, 3 pairs of saturation steps)"
            ),
            "{line}"
        );
        let one = BaselineRatio::of(&b, &r).with_paired(850.0, 1000.0, vec![0.85]);
        assert_eq!(
            one.ratio_text(),
            Some("0.850 (1 pair of saturation steps)".into())
        );
        // The result file says where the figures came from; older files read as not paired.
        let json = serde_json::to_string(&paired).expect("json");
        assert!(json.contains("\"paired\":true"), "{json}");
        let plain = serde_json::to_string(&BaselineRatio::of(&b, &r)).expect("json");
        let back: BaselineRatio = serde_json::from_str(&plain).expect("read back");
        assert!(!back.paired && !plain.contains("paired"), "{plain}");
    }

    #[test]
    fn no_ratio_when_a_search_found_no_sustainable_rate() {
        let stuck = MaxRate::NotFound {
            lowest_step: 100.0,
            reason: "backlog 9000 over acceptableBacklog 5000".into(),
        };
        let backend = run("kafka", 90.0, 40.0, Some(stuck));
        let raw = run(
            "raw-rdkafka",
            100.0,
            90.0,
            Some(MaxRate::Found { rate: 100.0 }),
        );
        let r = BaselineRatio::of(&backend, &raw);
        assert_eq!(r.ratio, None);
        let line = r.line("kafka", "w");
        assert!(
            line.contains("no ratio: kafka: no sustainable rate found (lowest step 100 msgs/s: backlog 9000 over acceptableBacklog 5000; e2e p99 12.5 ms there)"),
            "{line}"
        );
    }
}
