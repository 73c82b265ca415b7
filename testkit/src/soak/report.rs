//! What a soak run found: counts, end-to-end latency percentiles and the resident-memory curve.

use std::fmt::Write as _;
use std::time::Duration;

/// One resident-memory sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssSample {
    /// Time since the run started.
    pub at: Duration,
    /// Resident set size in KiB.
    pub kib: u64,
}

/// End-to-end latency percentiles in microseconds (send start to receipt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyPercentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest.
    pub max: u64,
}

/// The outcome of [`SoakScenario::run`](super::SoakScenario::run).
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// How long messages were sent for.
    pub sending: Duration,
    /// The whole run, drain included.
    pub total: Duration,
    /// Messages the producers handed to the broker (re-sends of failed ones not counted twice).
    pub sent: usize,
    /// Of those, confirmed by the broker.
    pub confirmed: usize,
    /// Sends or confirms that failed (the message was sent again).
    pub send_failures: usize,
    /// Distinct messages received.
    pub received: usize,
    /// Deliveries beyond the first of a message (redeliveries, re-sends).
    pub duplicates: usize,
    /// Confirmed messages never received before the drain bound.
    pub lost: usize,
    /// Acks that failed (the message may come again, counted as a duplicate then).
    pub ack_failures: usize,
    /// End-to-end latency of first deliveries.
    pub latency: LatencyPercentiles,
    /// Resident memory of this process over the run (empty where the platform does not say).
    pub rss: Vec<RssSample>,
}

impl SoakReport {
    /// Resident-memory growth between the run's second quarter (after warm-up: connection
    /// buffers, histograms and allocator arenas are in place by then) and its last quarter, as
    /// the difference of the two quarters' medians in KiB. `None` with fewer than 8 samples.
    pub fn memory_growth_kib(&self) -> Option<i64> {
        let n = self.rss.len();
        if n < 8 {
            return None;
        }
        let median = |part: &[RssSample]| {
            let mut kib: Vec<u64> = part.iter().map(|s| s.kib).collect();
            kib.sort_unstable();
            kib[kib.len() / 2] as i64
        };
        Some(median(&self.rss[3 * n / 4..]) - median(&self.rss[n / 4..n / 2]))
    }

    /// Whether resident memory stayed flat: grew by at most `tolerance_kib` plus 10 % of the
    /// warmed-up level between the second and the last quarter of the run.
    pub fn memory_is_flat(&self, tolerance_kib: u64) -> Option<bool> {
        let growth = self.memory_growth_kib()?;
        let n = self.rss.len();
        let warmed = self.rss[n / 4].kib as i64;
        Some(growth <= tolerance_kib as i64 + warmed / 10)
    }

    /// Messages per second received (first deliveries) over the sending time.
    pub fn throughput(&self) -> f64 {
        self.received as f64 / self.sending.as_secs_f64().max(1e-9)
    }

    /// A human summary: counts, latency and the memory curve (at most `curve_rows` rows).
    pub fn render(&self, curve_rows: usize) -> String {
        let mut out = String::new();
        let l = &self.latency;
        let _ = writeln!(
            out,
            "sent {} confirmed {} received {} lost {} duplicates {} send failures {} ack \
             failures {} ({:.0} msgs/s over {:.0} s, {:.0} s with drain)",
            self.sent,
            self.confirmed,
            self.received,
            self.lost,
            self.duplicates,
            self.send_failures,
            self.ack_failures,
            self.throughput(),
            self.sending.as_secs_f64(),
            self.total.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "end-to-end latency µs: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max
        );
        match self.memory_growth_kib() {
            Some(growth) => {
                let _ = writeln!(
                    out,
                    "resident memory: {} samples, growth second→last quarter {growth:+} KiB",
                    self.rss.len()
                );
            }
            None => {
                let _ = writeln!(out, "resident memory: {} samples", self.rss.len());
            }
        }
        let step = self.rss.len().div_ceil(curve_rows.max(1)).max(1);
        let peak = self.rss.iter().map(|s| s.kib).max().unwrap_or(1).max(1);
        for sample in self.rss.iter().step_by(step) {
            let bar = (sample.kib * 40 / peak) as usize;
            let _ = writeln!(
                out,
                "  {:>6.0} s {:>9} KiB {}",
                sample.at.as_secs_f64(),
                sample.kib,
                "#".repeat(bar)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_curve(kib: &[u64]) -> SoakReport {
        SoakReport {
            rss: kib
                .iter()
                .enumerate()
                .map(|(i, kib)| RssSample {
                    at: Duration::from_secs(i as u64),
                    kib: *kib,
                })
                .collect(),
            ..SoakReport::default()
        }
    }

    #[test]
    fn a_steady_curve_after_warm_up_is_flat() {
        let report = with_curve(&[
            10_000, 30_000, 40_000, 40_100, 40_050, 40_200, 40_100, 40_150,
        ]);
        assert_eq!(report.memory_growth_kib(), Some(50));
        assert_eq!(report.memory_is_flat(1024), Some(true));
    }

    #[test]
    fn a_climbing_curve_is_not_flat() {
        let report = with_curve(&[
            10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000,
        ]);
        assert_eq!(report.memory_growth_kib(), Some(40_000));
        assert_eq!(report.memory_is_flat(1024), Some(false));
    }

    #[test]
    fn too_few_samples_say_nothing() {
        assert_eq!(with_curve(&[1, 2, 3]).memory_is_flat(0), None);
    }

    #[test]
    fn the_rendered_curve_has_at_most_the_rows_asked_for() {
        let report = with_curve(&(0..100).map(|i| 1000 + i).collect::<Vec<_>>());
        let text = report.render(10);
        assert_eq!(text.lines().filter(|l| l.contains(" KiB ")).count(), 10);
        assert!(text.contains("lost 0"));
    }
}
