//! What the Markdown and HTML pages both show: the results table, the ratio and conformance
//! cells, the settings note, and escaping for each format.

use super::select::is_reference;
use crate::compare::{BackendReport, Comparison, RunOutcome};
use crate::result::BaselineRatio;
use crate::summary::ms;

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) fn results_table(c: &Comparison) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for b in &c.backends {
        for outcome in b.runs.iter().chain(&b.baseline) {
            match outcome {
                RunOutcome::Done(r) => {
                    let e = r.end_to_end();
                    let p = r.publish();
                    rows.push(vec![
                        r.workload.clone(),
                        r.driver.clone(),
                        if r.no_sustainable_rate() {
                            format!(
                                "{:.0} (lowest step; no sustainable rate)",
                                r.mailroom.target_rate
                            )
                        } else {
                            format!("{:.0}", r.mailroom.target_rate)
                        },
                        format!("{:.0}", r.mailroom.publish_rate_avg),
                        format!("{:.0}", r.mailroom.consume_rate_avg),
                        ms(e.p50),
                        ms(e.p75),
                        ms(e.p95),
                        ms(e.p99),
                        ms(e.p999),
                        ms(e.p9999),
                        ms(e.max),
                        ms(p.p50),
                        ms(p.p99),
                        format!("{}", r.aggregated_publish_delay_latency_99pct),
                        r.mailroom
                            .drain_seconds
                            .map_or(String::new(), |s| format!("{s:.2} s")),
                        match (&r.mailroom.first_error, r.mailroom.send_errors) {
                            (None, 0) => String::new(),
                            (e, n) => format!(
                                "{n} failed sends{}",
                                e.as_deref()
                                    .map(|e| format!("; first: {e}"))
                                    .unwrap_or_default()
                            ),
                        },
                    ]);
                }
                RunOutcome::NotExpressible { workload, reason } => {
                    let mut row = vec![workload.clone(), b.label()];
                    row.push(format!("not run: {reason}"));
                    rows.push(row);
                }
                RunOutcome::Failed { workload, error } => {
                    rows.push(vec![
                        workload.clone(),
                        b.label(),
                        format!("FAILED: {error}"),
                    ]);
                }
            }
        }
    }
    rows
}

pub(super) const RESULT_HEADERS: &[&str] = &[
    "workload",
    "driver",
    "target msgs/s",
    "published msgs/s",
    "consumed msgs/s",
    "e2e p50",
    "p75",
    "p95",
    "p99",
    "p99.9",
    "p99.99",
    "max",
    "publish p50",
    "publish p99",
    "publish delay p99 (µs)",
    "drain",
    "errors",
];

pub(super) fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Where the settings that trade latency for throughput are: each backend runs with its
/// defaults unless its URL above sets them, and its crate's docs say what each one costs.
pub(super) fn settings_note(c: &Comparison) -> String {
    let mut networked: Vec<String> = Vec::new();
    // A broker's variants share its crate: named once.
    for b in c
        .backends
        .iter()
        .filter(|b| b.error.is_none() && !is_reference(b))
    {
        let docs = format!("backends/{}/src/lib.rs", b.name);
        if !networked.contains(&docs) {
            networked.push(docs);
        }
    }
    if networked.is_empty() {
        return "Each backend ran with its defaults unless its URL sets them.".to_owned();
    }
    format!(
        "Each backend ran with its defaults unless its URL above sets them. What each latency / \
         throughput setting (batching, linger, confirm window, prefetch, acks, fetch wait) buys \
         and costs, with measured figures, is in the \"Latency and throughput\" section of {}.",
        networked.join(", ")
    )
}

/// What the mailroom-vs-raw table's figures are, above it in both formats.
/// Why a row's consumed rate can be above its published rate (both over the measured period).
pub(super) const RATES_NOTE: &str = "Published and consumed msgs/s are each counted over the measured period: a max-rate run's consumers may still be taking the warm-up's (the search's) last backlog when it starts, and a consumer behind at its end leaves some for the drain, so consumed can be above or below published without a message lost or doubled (the errors column and the conformance suite say that).";

pub(super) const RATIO_INTRO: &str = "Each max-rate workload also ran on the raw client the backend is built on, configured as the backend configures it. Ratio = backend msgs/s ÷ raw msgs/s; 1.0 means the abstraction costs nothing. Where it says \"pairs of saturation steps\", the rates are from closed-loop steps of the backend and the raw client run at once, a step of one then a step of the other (the order swapped every pair), so what the machine does meanwhile lands on both: in each step the producers send as fast as they can while the backlog stays within the workload's acceptableBacklog, and the figure is what moved end to end over the step's second half (the most the broker sustains with a bounded backlog, measured instead of searched for); the ratio and the two rates are those of the median pair (the pair whose ratio is the median of the pairs'), and the pairs' own ratios are shown as their spread. Otherwise the rates are those the workload's runs moved end to end. The e2e p99 figures are always the workload runs'.";

/// The ratio, or why there is none.
pub(super) fn ratio_cell(r: &BaselineRatio) -> String {
    match (r.ratio_text(), &r.note) {
        (Some(ratio), _) => ratio,
        (None, note) => format!("no ratio: {}", note.as_deref().unwrap_or("-")),
    }
}

pub(super) fn conformance_summary(b: &BackendReport) -> String {
    if b.error.is_some() {
        return "not run (unreachable)".into();
    }
    if b.conformance.is_empty() {
        return "not run".into();
    }
    let count = |s: &str| b.conformance.iter().filter(|c| c.status == s).count();
    format!(
        "{} passed, {} failed, {} skipped by capability",
        count("pass"),
        count("fail"),
        count("skip")
    )
}
