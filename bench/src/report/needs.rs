//! The "which broker for which need" lines: chosen among the networked brokers measured, each
//! with the figures or checks it was computed from.

use std::fmt::Write as _;

use mailroom_core::{Capability, ExchangeKind};

use super::select::{
    done, fixed_rate_workloads, is_backlog, is_max_rate, is_reference, moved, sustained,
};
use super::verdicts::verdicts;
use crate::compare::{declares, BackendReport, Comparison, RunOutcome};
use crate::result::TestResult;
use crate::summary::ms;

/// One line of "which broker for which need".
#[derive(Debug, Clone)]
pub struct NeedLine {
    /// The need.
    pub need: String,
    /// The backends that meet it best / at all, computed.
    pub choice: String,
    /// The numbers or checks it was computed from.
    pub evidence: String,
}

/// The semantic needs: the capability that meets each, and the conformance case that checks it.
pub(super) const SEMANTICS: &[(&str, Capability, Option<&str>)] = &[
    (
        "Per-key ordering",
        Capability::PerKeyOrdering,
        Some("per_key_order"),
    ),
    (
        "Competing consumers on one queue",
        Capability::CompetingConsumers,
        Some("competing_consumers_share"),
    ),
    (
        "Replay from an earlier position",
        Capability::Replay,
        Some("replay_from_earliest"),
    ),
    (
        "Routing by exact key (direct exchange)",
        Capability::Exchange(ExchangeKind::Direct),
        Some("direct_routing"),
    ),
    (
        "Routing by pattern (topic exchange)",
        Capability::Exchange(ExchangeKind::Topic),
        Some("topic_routing"),
    ),
    (
        "Routing by headers (headers exchange)",
        Capability::Exchange(ExchangeKind::Headers),
        Some("headers_routing"),
    ),
    (
        "Fanout to several queues",
        Capability::Exchange(ExchangeKind::Fanout),
        Some("fanout_reaches_every_queue"),
    ),
    (
        "Delayed delivery",
        Capability::DelayedDelivery,
        Some("delayed_delivery"),
    ),
    (
        "Dead letters on nack",
        Capability::DeadLetter,
        Some("dead_letter_on_nack"),
    ),
    (
        "Dead letter after max attempts",
        Capability::MaxDeliveryAttempts,
        Some("dead_letter_after_max_attempts"),
    ),
    (
        "Atomic consume-then-produce (transactions)",
        Capability::Transactions,
        Some("transaction_commits_or_aborts_as_one"),
    ),
    (
        "Messages survive a broker restart (persistence)",
        Capability::Persistence,
        None,
    ),
];

/// The "which broker for which need" lines, chosen among the networked brokers measured (the
/// in-process broker's evidence is appended as a reference line), then a verdict per common
/// shape of work, computed from those lines' figures and checks.
pub fn needs(c: &Comparison) -> Vec<NeedLine> {
    let reachable: Vec<&BackendReport> = c.backends.iter().filter(|b| b.error.is_none()).collect();
    let (references, contenders): (Vec<&BackendReport>, Vec<&BackendReport>) =
        reachable.iter().partition(|b| is_reference(b));
    if contenders.is_empty() {
        return need_lines(c, &references);
    }
    let mut lines = need_lines(c, &contenders);
    let reference_lines = need_lines(c, &references);
    for line in &mut lines {
        if let Some(r) = reference_lines.iter().find(|r| r.need == line.need) {
            let _ = write!(
                line.evidence,
                " — reference line, in-process (not a choice): {}",
                r.evidence
            );
        }
    }
    lines.extend(verdicts(c, &contenders));
    lines
}

/// One need line per measured need and per semantic, chosen among `reachable`.
fn need_lines(c: &Comparison, reachable: &[&BackendReport]) -> Vec<NeedLine> {
    let mut lines = Vec::new();
    let only = |n: usize| {
        if n == 1 {
            " (the only backend measured)"
        } else {
            ""
        }
    };

    // Throughput: the max-rate search's measured run; a search that found no sustainable rate
    // is evidence, never a winner.
    let mut tput: Vec<(&BackendReport, &TestResult)> = reachable
        .iter()
        .filter_map(|b| done(b).find(|r| is_max_rate(r)).map(|r| (*b, r)))
        .collect();
    tput.sort_by(|a, b| {
        (a.1.no_sustainable_rate(), -moved(a.1))
            .partial_cmp(&(b.1.no_sustainable_rate(), -moved(b.1)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some((best, r)) = tput.first() {
        let found = tput
            .iter()
            .filter(|(_, r)| !r.no_sustainable_rate())
            .count();
        lines.push(NeedLine {
            need: format!("Highest sustainable throughput ({})", r.workload),
            choice: if r.no_sustainable_rate() {
                "none found a sustainable rate".to_owned()
            } else if found < tput.len() && found == 1 {
                format!("{} (the only one that found a sustainable rate)", best.name)
            } else {
                format!("{}{}", best.name, only(found))
            },
            evidence: tput
                .iter()
                .map(|(b, r)| {
                    if r.no_sustainable_rate() {
                        format!("{}: {}", b.label(), r.max_rate_text().unwrap_or_default())
                    } else {
                        format!(
                            "{}: {:.0} msgs/s published, {:.0} consumed (search ended at {:.0})",
                            b.label(),
                            r.mailroom.publish_rate_avg,
                            r.mailroom.consume_rate_avg,
                            r.mailroom.target_rate
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
        });
    }

    // Latency at a fixed rate: one line per fixed-rate workload.
    for workload in fixed_rate_workloads(c) {
        let mut rows: Vec<(&BackendReport, &TestResult)> = reachable
            .iter()
            .filter_map(|b| done(b).find(|r| r.workload == workload).map(|r| (*b, r)))
            .collect();
        rows.sort_by(|a, b| {
            (!sustained(a.1), a.1.aggregated_end_to_end_latency_99pct)
                .partial_cmp(&(!sustained(b.1), b.1.aggregated_end_to_end_latency_99pct))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let Some((best, r)) = rows.first() else {
            continue;
        };
        let not_run: Vec<String> = reachable
            .iter()
            .filter_map(|b| {
                b.runs.iter().find_map(|o| match o {
                    RunOutcome::NotExpressible { workload: w, .. } if *w == workload => {
                        Some(format!("{}: cannot express it", b.label()))
                    }
                    RunOutcome::Failed { workload: w, .. } if *w == workload => {
                        Some(format!("{}: failed", b.label()))
                    }
                    _ => None,
                })
            })
            .collect();
        let mut evidence: Vec<String> = rows
            .iter()
            .map(|(b, r)| {
                format!(
                    "{}: e2e p99 {} ms (p50 {}, max {}) at {:.0} msgs/s{}",
                    b.label(),
                    ms(r.aggregated_end_to_end_latency_99pct),
                    ms(r.aggregated_end_to_end_latency_50pct),
                    ms(r.aggregated_end_to_end_latency_max),
                    r.mailroom.publish_rate_avg,
                    if sustained(r) {
                        String::new()
                    } else {
                        format!(
                            " — did NOT sustain the target {:.0}",
                            r.mailroom.target_rate
                        )
                    }
                )
            })
            .collect();
        evidence.extend(not_run);
        lines.push(NeedLine {
            need: format!(
                "Lowest p99 end-to-end latency at {:.0} msgs/s ({workload})",
                r.mailroom.target_rate
            ),
            choice: if sustained(r) {
                format!("{}{}", best.name, only(rows.len()))
            } else {
                "none sustained the rate".into()
            },
            evidence: evidence.join("; "),
        });
    }

    // Backlog drain.
    let mut drains: Vec<(&BackendReport, &TestResult)> = reachable
        .iter()
        .filter_map(|b| done(b).find(|r| is_backlog(r)).map(|r| (*b, r)))
        .collect();
    drains.sort_by(|a, b| {
        a.1.mailroom
            .drain_seconds
            .unwrap_or(f64::INFINITY)
            .total_cmp(&b.1.mailroom.drain_seconds.unwrap_or(f64::INFINITY))
    });
    if let Some((best, r)) = drains.first() {
        lines.push(NeedLine {
            need: format!("Fastest backlog drain ({})", r.workload),
            choice: if r.mailroom.drain_seconds.is_some() {
                format!("{}{}", best.name, only(drains.len()))
            } else {
                "none drained within the test duration".into()
            },
            evidence: drains
                .iter()
                .map(|(b, r)| match r.mailroom.drain_seconds {
                    Some(s) => format!(
                        "{}: {} messages drained in {s:.2} s while producing at {:.0} msgs/s",
                        b.label(),
                        r.mailroom.drain_from.unwrap_or(0),
                        r.mailroom.target_rate
                    ),
                    None => format!(
                        "{}: {} messages not drained in {:.0} s",
                        b.label(),
                        r.mailroom.drain_from.unwrap_or(0),
                        r.mailroom.measured_seconds
                    ),
                })
                .collect::<Vec<_>>()
                .join("; "),
        });
    }

    // Semantics: declared capability, confirmed by its conformance case where there is one.
    let semantics = SEMANTICS;
    for (need, capability, case) in semantics {
        let mut confirmed = Vec::new();
        let mut declared_only = Vec::new();
        let mut evidence = Vec::new();
        for b in reachable {
            let declared = declares(b, *capability);
            let checked = case.and_then(|c| b.case_passed(c));
            // "declared client-side": the client library does it, at a cost the broker's would not
            // have (the routing section measures it for topic exchanges).
            let how = match b
                .capabilities
                .as_ref()
                .and_then(|caps| caps.implementation(*capability))
            {
                Some(mailroom_core::Implementation::ClientSide) => " client-side",
                _ => "",
            };
            let text = match (declared, case, checked) {
                (false, _, _) => format!("{}: declares no {capability}", b.label()),
                (true, Some(c), Some(true)) => {
                    confirmed.push(b.label());
                    let detail = b
                        .conformance
                        .iter()
                        .find(|line| line.name == *c)
                        .map(|line| line.detail.as_str())
                        .filter(|d| !d.is_empty())
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default();
                    let per_partition = if *capability == Capability::CompetingConsumers
                        && declares(b, Capability::PartitionedQueues)
                    {
                        "; work is shared per partition: one busy consumer per partition at most"
                    } else {
                        ""
                    };
                    format!(
                        "{}: declared{how}, conformance case {c} passed{detail}{per_partition}",
                        b.label()
                    )
                }
                (true, Some(c), Some(false)) => {
                    format!(
                        "{}: declared{how}, but conformance case {c} FAILED",
                        b.label()
                    )
                }
                (true, Some(c), None) => {
                    declared_only.push(b.label());
                    format!("{}: declared{how}; case {c} not run", b.label())
                }
                (true, None, _) if *capability == Capability::Persistence => match &b.persistence {
                    Some(run) if run.passed() => {
                        confirmed.push(b.label());
                        format!(
                            "{}: declared, broker-restart scenario passed ({})",
                            b.label(),
                            run.summary()
                        )
                    }
                    Some(run) => format!(
                        "{}: declared, but the broker-restart scenario FAILED ({})",
                        b.label(),
                        run.summary()
                    ),
                    None => {
                        declared_only.push(b.label());
                        format!(
                            "{}: declared; not restarted in this run (`compare \
                                 --restart-brokers` runs the broker-restart scenario; \
                                 scripts/test.sh runs it in the crate's fault test)",
                            b.label()
                        )
                    }
                },
                (true, None, _) => {
                    declared_only.push(b.label());
                    format!("{}: declared (the suite has no case for it)", b.label())
                }
            };
            evidence.push(text);
        }
        let choice = match (confirmed.is_empty(), declared_only.is_empty()) {
            (true, true) => "none of the measured backends".to_owned(),
            (false, true) => format!("{} (checked)", confirmed.join(", ")),
            (true, false) => format!("{} (declared)", declared_only.join(", ")),
            (false, false) => format!(
                "{} (checked); {} (declared)",
                confirmed.join(", "),
                declared_only.join(", ")
            ),
        };
        lines.push(NeedLine {
            need: (*need).to_owned(),
            choice,
            evidence: evidence.join("; "),
        });
    }
    lines
}
