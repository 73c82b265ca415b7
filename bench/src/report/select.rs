//! Which of a comparison's results each part of the report reads.

use crate::compare::{BackendReport, Comparison, RunOutcome};
use crate::result::{BaselineRatio, TestResult};

pub(super) fn done(b: &BackendReport) -> impl Iterator<Item = &TestResult> {
    b.runs.iter().filter_map(RunOutcome::result)
}

pub(super) fn is_max_rate(r: &TestResult) -> bool {
    !r.mailroom.rate_search.is_empty()
}

pub(super) fn is_backlog(r: &TestResult) -> bool {
    r.mailroom.drain_from.is_some()
}

/// Producers hit the target rate and consumers kept pace (every subscription counted).
pub(super) fn sustained(r: &TestResult) -> bool {
    let subs = f64::from(r.mailroom.subscriptions.max(1));
    r.mailroom.publish_rate_avg >= 0.95 * r.mailroom.target_rate
        && r.mailroom.consume_rate_avg >= 0.95 * r.mailroom.publish_rate_avg * subs
}

/// Messages per second moved end to end (the lower of the publish and consume rates).
pub(super) fn moved(r: &TestResult) -> f64 {
    r.mailroom.publish_rate_avg.min(r.mailroom.consume_rate_avg)
}

/// The fixed-rate workloads with results, in workload order, by name.
pub(super) fn fixed_rate_workloads(c: &Comparison) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for b in &c.backends {
        for r in done(b) {
            if !is_max_rate(r) && !is_backlog(r) && !names.contains(&r.workload) {
                names.push(r.workload.clone());
            }
        }
    }
    names
}

/// The workload whose latency curves are charted: the fixed-rate one that ran on the most
/// backends (ties: the first with 1 KiB messages, then the first).
pub(super) fn latency_workload(c: &Comparison) -> Option<String> {
    let names = fixed_rate_workloads(c);
    let count = |n: &str| {
        c.backends
            .iter()
            .filter(|b| done(b).any(|r| r.workload == n))
            .count()
    };
    let best = names.iter().map(|n| count(n)).max()?;
    let candidates: Vec<&String> = names.iter().filter(|n| count(n) == best).collect();
    let kib = candidates.iter().find(|n| {
        c.backends
            .iter()
            .flat_map(done)
            .any(|r| &r.workload == **n && r.message_size == 1024)
    });
    kib.or(candidates.first()).map(|n| (*n).clone())
}

/// (backend, workload, comparison) for every backend run that has its raw baseline's beside
/// it: the abstraction's cost on the same broker in the same run.
pub fn baseline_ratios(c: &Comparison) -> Vec<(String, String, BaselineRatio)> {
    c.backends
        .iter()
        .flat_map(|b| {
            done(b).filter_map(|r| {
                r.mailroom
                    .baseline
                    .clone()
                    .map(|ratio| (b.label(), r.workload.clone(), ratio))
            })
        })
        .collect()
}

/// The in-process broker runs inside the benchmark itself: no network, no disk, no other
/// process. Its figures are a reference line (the cost floor of the harness and the traits),
/// shown beside the choice, never the choice for a system of services.
pub(super) fn is_reference(b: &BackendReport) -> bool {
    b.url.starts_with("memory:")
}
