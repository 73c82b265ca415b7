//! The comparison report: Markdown, a self-contained HTML page with inline SVG charts, and the
//! "which broker for which need" lines, each computed from what was measured or declared, with
//! its evidence beside it.

use std::fmt::Write as _;

use mailroom_core::{Capability, ExchangeKind};

use super::compare::{capability_rows, declares, BackendReport, Comparison, RunOutcome};
use super::result::{ms, BaselineRatio, MaxRate, TestResult};

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

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

fn done(b: &BackendReport) -> impl Iterator<Item = &TestResult> {
    b.runs.iter().filter_map(RunOutcome::result)
}

fn is_max_rate(r: &TestResult) -> bool {
    !r.mailroom.rate_search.is_empty()
}

fn is_backlog(r: &TestResult) -> bool {
    r.mailroom.drain_from.is_some()
}

/// Producers hit the target rate and consumers kept pace (every subscription counted).
fn sustained(r: &TestResult) -> bool {
    let subs = f64::from(r.mailroom.subscriptions.max(1));
    r.mailroom.publish_rate_avg >= 0.95 * r.mailroom.target_rate
        && r.mailroom.consume_rate_avg >= 0.95 * r.mailroom.publish_rate_avg * subs
}

/// Messages per second moved end to end (the lower of the publish and consume rates).
fn moved(r: &TestResult) -> f64 {
    r.mailroom.publish_rate_avg.min(r.mailroom.consume_rate_avg)
}

/// The fixed-rate workloads with results, in workload order, by name.
fn fixed_rate_workloads(c: &Comparison) -> Vec<String> {
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
fn latency_workload(c: &Comparison) -> Option<String> {
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
                    .map(|ratio| (b.name.clone(), r.workload.clone(), ratio))
            })
        })
        .collect()
}

/// The in-process broker runs inside the benchmark itself: no network, no disk, no other
/// process. Its figures are a reference line (the cost floor of the harness and the traits),
/// shown beside the choice, never the choice for a system of services.
fn is_reference(b: &BackendReport) -> bool {
    b.url.starts_with("memory:")
}

/// The semantic needs: the capability that meets each, and the conformance case that checks it.
const SEMANTICS: &[(&str, Capability, Option<&str>)] = &[
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
                        format!("{}: {}", b.name, r.max_rate_text().unwrap_or_default())
                    } else {
                        format!(
                            "{}: {:.0} msgs/s published, {:.0} consumed (search ended at {:.0})",
                            b.name,
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
                        Some(format!("{}: cannot express it", b.name))
                    }
                    RunOutcome::Failed { workload: w, .. } if *w == workload => {
                        Some(format!("{}: failed", b.name))
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
                    b.name,
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
                        b.name,
                        r.mailroom.drain_from.unwrap_or(0),
                        r.mailroom.target_rate
                    ),
                    None => format!(
                        "{}: {} messages not drained in {:.0} s",
                        b.name,
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
            let text = match (declared, case, checked) {
                (false, _, _) => format!("{}: declares no {capability}", b.name),
                (true, Some(c), Some(true)) => {
                    confirmed.push(b.name.clone());
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
                        "{}: declared, conformance case {c} passed{detail}{per_partition}",
                        b.name
                    )
                }
                (true, Some(c), Some(false)) => {
                    format!("{}: declared, but conformance case {c} FAILED", b.name)
                }
                (true, Some(c), None) => {
                    declared_only.push(b.name.clone());
                    format!("{}: declared; case {c} not run", b.name)
                }
                (true, None, _) if *capability == Capability::Persistence => {
                    declared_only.push(b.name.clone());
                    format!(
                        "{}: declared; shown by the broker-restart fault test of its crate \
                         (10,000 messages, two restarts, 0 lost; scripts/test.sh runs it, \
                         compare does not)",
                        b.name
                    )
                }
                (true, None, _) => {
                    declared_only.push(b.name.clone());
                    format!("{}: declared (the suite has no case for it)", b.name)
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

/// What ranks the brokers that can do a shape of work.
#[derive(Clone, Copy)]
enum Rank {
    /// The highest max-rate figure.
    Throughput,
    /// The lowest e2e p99 on the first fixed-rate workload.
    Latency,
}

/// A common shape of work: the capabilities it cannot do without, and what ranks the brokers
/// that have them all.
struct Shape {
    name: &'static str,
    needs: &'static [Capability],
    rank: Rank,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "task queue with retries",
        needs: &[
            Capability::CompetingConsumers,
            Capability::AttemptCount,
            Capability::DeadLetter,
            Capability::MaxDeliveryAttempts,
        ],
        rank: Rank::Latency,
    },
    Shape {
        name: "event log with replay",
        needs: &[
            Capability::Replay,
            Capability::Persistence,
            Capability::PerKeyOrdering,
        ],
        rank: Rank::Throughput,
    },
    Shape {
        name: "fan-out to many subscribers",
        needs: &[Capability::Exchange(ExchangeKind::Fanout)],
        rank: Rank::Latency,
    },
    Shape {
        name: "high-rate keyed stream",
        needs: &[
            Capability::PerKeyOrdering,
            Capability::PartitionedQueues,
            Capability::CompetingConsumers,
        ],
        rank: Rank::Throughput,
    },
];

/// The capabilities of `needs` that `b` lacks: not declared, or declared but failing the
/// conformance case that checks it.
fn lacks(b: &BackendReport, needs: &[Capability]) -> Vec<String> {
    needs
        .iter()
        .filter(|cap| {
            let case = SEMANTICS
                .iter()
                .find(|(_, c, _)| c == *cap)
                .and_then(|(_, _, case)| *case);
            !declares(b, **cap) || case.and_then(|c| b.case_passed(c)) == Some(false)
        })
        .map(|cap| cap.to_string())
        .collect()
}

/// `b`'s figure for `rank`, as (value, text); `None` when it has none (not run, or the run
/// found no sustainable rate / did not sustain its rate).
fn rank_figure(c: &Comparison, b: &BackendReport, rank: Rank) -> Option<(f64, String)> {
    match rank {
        Rank::Throughput => done(b)
            .find(|r| is_max_rate(r) && !r.no_sustainable_rate())
            .map(|r| (moved(r), format!("{:.0} msgs/s at max rate", moved(r)))),
        Rank::Latency => {
            let workload = fixed_rate_workloads(c).into_iter().next()?;
            done(b)
                .find(|r| r.workload == workload && sustained(r))
                .map(|r| {
                    let p99 = r.aggregated_end_to_end_latency_99pct;
                    (p99, format!("e2e p99 {} ms ({workload})", ms(p99)))
                })
        }
    }
}

/// One verdict per shape of work, among the networked brokers: those with every capability
/// the shape needs, ranked by the shape's figure.
fn verdicts(c: &Comparison, contenders: &[&BackendReport]) -> Vec<NeedLine> {
    SHAPES
        .iter()
        .map(|shape| {
            let mut able: Vec<(&BackendReport, Option<(f64, String)>)> = Vec::new();
            let mut unable = Vec::new();
            for b in contenders {
                let missing = lacks(b, shape.needs);
                if missing.is_empty() {
                    able.push((*b, rank_figure(c, b, shape.rank)));
                } else {
                    unable.push(format!("{} lacks {}", b.name, missing.join(", ")));
                }
            }
            // Measured before unmeasured; then the better figure first.
            able.sort_by(|(_, x), (_, y)| match (x, y, shape.rank) {
                (Some((x, _)), Some((y, _)), Rank::Throughput) => y.total_cmp(x),
                (Some((x, _)), Some((y, _)), Rank::Latency) => x.total_cmp(y),
                (Some(_), None, _) => std::cmp::Ordering::Less,
                (None, Some(_), _) => std::cmp::Ordering::Greater,
                (None, None, _) => std::cmp::Ordering::Equal,
            });
            let needs: Vec<String> = shape.needs.iter().map(|c| c.to_string()).collect();
            let ranked_by = match shape.rank {
                Rank::Throughput => "ranked by max sustainable throughput",
                Rank::Latency => "ranked by e2e p99 at a fixed rate",
            };
            let mut evidence = vec![format!("needs {}; {ranked_by}", needs.join(", "))];
            evidence.extend(able.iter().map(|(b, figure)| match figure {
                Some((_, text)) => format!("{}: has them all, {text}", b.name),
                None => format!("{}: has them all, no figure measured", b.name),
            }));
            evidence.extend(unable);
            let choice = match able.first() {
                Some((b, _)) if able.len() == 1 => format!("{} (the only one able)", b.name),
                Some((b, Some(_))) => b.name.clone(),
                Some((b, None)) => format!("{} (able; not measured)", b.name),
                None => "none of the measured brokers".to_owned(),
            };
            NeedLine {
                need: format!("Verdict: {}", shape.name),
                choice,
                evidence: evidence.join("; "),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// charts

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars: (label, value, text shown instead of the value, if any).
fn bar_chart(title: &str, unit: &str, bars: &[(String, f64, Option<String>)]) -> String {
    let (w, left, row) = (760.0, 260.0, 28.0);
    let h = 60.0 + row * bars.len().max(1) as f64;
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12"><title>{}</title><text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(title),
        esc(title)
    );
    for (i, (name, value, text)) in bars.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        let bw = (w - left - 110.0) * value / max;
        let text = text.clone().unwrap_or_else(|| format!("{value:.0} {unit}"));
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{bw:.1}" height="{}" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            left - 8.0,
            y + 16.0,
            esc(name),
            row - 8.0,
            COLORS[i % COLORS.len()],
            left + bw + 6.0,
            y + 16.0,
            esc(&text)
        );
    }
    if bars.is_empty() {
        s.push_str(r#"<text x="20" y="56">no max-rate result</text>"#);
    }
    s.push_str("</svg>");
    s
}

/// A line chart; `xs` label the x positions (equally spaced), y is log10 when `log_y`.
fn line_chart(
    title: &str,
    x_title: &str,
    y_title: &str,
    xs: &[String],
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> String {
    let (w, h, l, r, t, b) = (760.0, 380.0, 70.0, 190.0, 40.0, 50.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .collect();
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(if xs.is_empty() {
            1.0
        } else {
            (xs.len() - 1) as f64
        })
        .max(1e-9);
    let f = |v: f64| if log_y { v.max(1e-3).log10() } else { v };
    let mut ymin = ys.iter().copied().map(f).fold(f64::INFINITY, f64::min);
    let mut ymax = ys.iter().copied().map(f).fold(f64::NEG_INFINITY, f64::max);
    if !ymin.is_finite() || !ymax.is_finite() {
        (ymin, ymax) = (0.0, 1.0);
    }
    if log_y {
        ymin = ymin.floor();
        ymax = ymax.ceil().max(ymin + 1.0);
    } else {
        ymin = 0.0;
        ymax = (ymax * 1.1).max(1.0);
    }
    let px = |x: f64| l + pw * x / xmax;
    let py = |y: f64| t + ph - ph * (f(y) - ymin) / (ymax - ymin);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12"><title>{}</title><text x="10" y="20" font-size="14" font-weight="bold">{}</text><rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##,
        esc(title),
        esc(title)
    );
    // y grid
    if log_y {
        let mut e = ymin;
        while e <= ymax + 1e-9 {
            let y = t + ph - ph * (e - ymin) / (ymax - ymin);
            let _ = write!(
                s,
                "<line x1=\"{l}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                l + pw,
                l - 6.0,
                y + 4.0,
                trim_num(10f64.powf(e))
            );
            e += 1.0;
        }
    } else {
        for i in 0..=4 {
            let v = ymin + (ymax - ymin) * i as f64 / 4.0;
            let y = t + ph - ph * i as f64 / 4.0;
            let _ = write!(
                s,
                "<line x1=\"{l}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                l + pw,
                l - 6.0,
                y + 4.0,
                trim_num(v)
            );
        }
    }
    // x labels
    if xs.is_empty() {
        for i in 0..=4 {
            let v = xmax * i as f64 / 4.0;
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                px(v),
                t + ph + 16.0,
                trim_num(v)
            );
        }
    } else {
        for (i, x) in xs.iter().enumerate() {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                px(i as f64),
                t + ph + 16.0,
                esc(x)
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        l + pw / 2.0,
        h - 10.0,
        esc(x_title),
        t + ph / 2.0,
        t + ph / 2.0,
        esc(y_title)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        let ly = t + 14.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            l + pw + 10.0,
            ly - 4.0,
            l + pw + 26.0,
            ly,
            esc(name)
        );
    }
    if series.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\">no data</text>",
            l + 20.0,
            t + 30.0
        );
    }
    s.push_str("</svg>");
    s
}

fn trim_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Percentiles on the latency curve's x axis.
const CURVE: &[(&str, &str)] = &[
    ("p50", "50"),
    ("p75", "75"),
    ("p90", "90"),
    ("p95", "95"),
    ("p99", "99"),
    ("p99.9", "99.9"),
    ("p99.99", "99.99"),
    ("max", "100"),
];

/// The report's charts as (file stem, SVG).
pub fn charts(c: &Comparison) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Throughput per backend (max-rate search), with raw baselines.
    let mut bars = Vec::new();
    let bar = |label: String, r: &TestResult| {
        if r.no_sustainable_rate() {
            let lowest = match &r.mailroom.max_rate {
                Some(MaxRate::NotFound { lowest_step, .. }) => *lowest_step,
                _ => 0.0,
            };
            (
                label,
                0.0,
                Some(format!(
                    "no sustainable rate (lowest step {lowest:.0} msgs/s)"
                )),
            )
        } else {
            (label, moved(r), None)
        }
    };
    for b in &c.backends {
        if let Some(r) = done(b).find(|r| is_max_rate(r)) {
            bars.push(bar(b.name.clone(), r));
        }
        if let Some(r) = b
            .baseline
            .iter()
            .filter_map(RunOutcome::result)
            .find(|r| is_max_rate(r))
        {
            bars.push(bar(format!("{} (raw baseline)", r.driver), r));
        }
    }
    out.push((
        "throughput".to_owned(),
        bar_chart(
            "Max sustainable throughput per backend (max-rate workload, msgs/s end to end)",
            "msgs/s",
            &bars,
        ),
    ));
    // Latency percentile curves at a fixed rate.
    let workload = latency_workload(c);
    let mut series = Vec::new();
    if let Some(w) = &workload {
        for b in &c.backends {
            if let Some(r) = done(b).find(|r| &r.workload == w) {
                let points = CURVE
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, key))| {
                        r.aggregated_end_to_end_latency_quantiles
                            .get(*key)
                            .map(|v| (i as f64, *v))
                    })
                    .collect();
                series.push((b.name.clone(), points));
            }
        }
    }
    let rate = workload
        .as_ref()
        .and_then(|w| c.backends.iter().flat_map(done).find(|r| &r.workload == w))
        .map_or(0.0, |r| r.mailroom.target_rate);
    out.push((
        "latency".to_owned(),
        line_chart(
            &format!(
                "End-to-end latency percentiles at {rate:.0} msgs/s ({})",
                workload.as_deref().unwrap_or("no fixed-rate workload")
            ),
            "percentile",
            "latency (ms, log scale)",
            &CURVE
                .iter()
                .map(|(l, _)| (*l).to_owned())
                .collect::<Vec<_>>(),
            &series,
            true,
        ),
    ));
    // Backlog drain.
    let mut series = Vec::new();
    for b in &c.backends {
        if let Some(r) = done(b).find(|r| is_backlog(r)) {
            series.push((
                b.name.clone(),
                r.mailroom
                    .backlog_series
                    .iter()
                    .map(|(t, v)| (*t, *v as f64))
                    .collect(),
            ));
        }
    }
    out.push((
        "backlog".to_owned(),
        line_chart(
            "Backlog build-up and drain (messages waiting)",
            "seconds since start",
            "messages",
            &[],
            &series,
            false,
        ),
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// Markdown and HTML

fn results_table(c: &Comparison) -> Vec<Vec<String>> {
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
                    let mut row = vec![workload.clone(), b.name.clone()];
                    row.push(format!("not run: {reason}"));
                    rows.push(row);
                }
                RunOutcome::Failed { workload, error } => {
                    rows.push(vec![
                        workload.clone(),
                        b.name.clone(),
                        format!("FAILED: {error}"),
                    ]);
                }
            }
        }
    }
    rows
}

const RESULT_HEADERS: &[&str] = &[
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

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown report; `charts` are linked as the `.svg` files written beside it.
pub fn markdown(c: &Comparison, charts: &[(String, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# mailroom compare\n");
    let _ = writeln!(
        s,
        "Command: `{}`  \nStarted: {} — took {:.0} s  \nMachine: {}\n",
        c.command,
        c.started,
        c.elapsed.as_secs_f64(),
        c.machine
    );
    let _ = writeln!(s, "## Brokers\n");
    let _ = writeln!(
        s,
        "| backend | URL | implementation and version (as reported by the broker) | conformance |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for b in &c.backends {
        let conf = conformance_summary(b);
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} |",
            md_cell(&b.name),
            md_cell(&b.url),
            md_cell(b.error.as_deref().map_or(&b.server_version, |e| e)),
            md_cell(&conf)
        );
    }
    let _ = writeln!(s, "\n{}", settings_note(c));
    let _ = writeln!(s, "\n## Which broker for which need\n");
    let _ = writeln!(
        s,
        "Computed from this run's numbers and from each backend's declared capabilities, checked by the conformance suite where it has a case. Nothing here is written by hand.\n"
    );
    let _ = writeln!(s, "| need | choice | evidence |");
    let _ = writeln!(s, "|---|---|---|");
    for n in needs(c) {
        let _ = writeln!(
            s,
            "| {} | **{}** | {} |",
            md_cell(&n.need),
            md_cell(&n.choice),
            md_cell(&n.evidence)
        );
    }
    let _ = writeln!(s, "\n## Charts\n");
    for (name, _) in charts {
        let _ = writeln!(s, "![{name}]({name}.svg)\n");
    }
    let _ = writeln!(s, "## Results\n");
    let _ = writeln!(
        s,
        "Latencies in ms. End-to-end = receive − *intended* send time (open loop: no coordinated omission); publish = confirm − actual send; publish delay = actual − intended send. Warm-up excluded. OMB-format JSON per run in `results/`.\n"
    );
    let _ = writeln!(s, "| {} |", RESULT_HEADERS.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(RESULT_HEADERS.len()));
    for row in results_table(c) {
        let mut cells: Vec<String> = row.iter().map(|c| md_cell(c)).collect();
        cells.resize(RESULT_HEADERS.len(), String::new());
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    let ratios = baseline_ratios(c);
    if !ratios.is_empty() {
        let _ = writeln!(
            s,
            "\n## Abstraction overhead: mailroom vs raw client (same broker, same run)\n"
        );
        let _ = writeln!(
            s,
            "Each max-rate workload also ran on the raw client the backend is built on, configured as the backend configures it. Ratio = backend msgs/s ÷ raw msgs/s (moved end to end); 1.0 means the abstraction costs nothing.\n"
        );
        let _ = writeln!(s, "| backend | raw baseline | workload | backend msgs/s | raw msgs/s | mailroom vs raw | e2e p99 backend / raw (ms) |\n|---|---|---|---|---|---|---|");
        for (b, workload, r) in &ratios {
            let _ = writeln!(
                s,
                "| {b} | {} | {} | {:.0} | {:.0} | {} | {} / {} |",
                r.raw_driver,
                md_cell(workload),
                r.rate,
                r.raw_rate,
                md_cell(&ratio_cell(r)),
                ms(r.e2e_p99),
                ms(r.raw_e2e_p99)
            );
        }
    }
    if let Some(o) = &c.overhead {
        let _ = writeln!(s, "\n## Harness overhead\n");
        let _ = writeln!(
            s,
            "Raw tokio mpsc through the harness: {:.0} msgs/s; bare loop on the same channel: {:.0} msgs/s; ratio **{:.3}** (median of {} rounds of {:?}). A broker measured well below the through-harness rate is not limited by the harness.",
            o.harness_rate, o.bare_rate, o.ratio, o.rounds, o.round
        );
    }
    for b in &c.backends {
        if b.error.is_some() {
            continue;
        }
        let _ = writeln!(s, "\n## {} — capabilities and conformance\n", b.name);
        if let Some(caps) = &b.capabilities {
            let rows = capability_rows(caps);
            let _ = writeln!(s, "| capability | declared |\n|---|---|");
            for (k, v) in rows {
                let _ = writeln!(s, "| {k} | {v} |");
            }
        }
        if !b.conformance.is_empty() {
            let _ = writeln!(
                s,
                "\n| case | result | seconds | detail |\n|---|---|---|---|"
            );
            for case in &b.conformance {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} |",
                    case.name,
                    case.status,
                    case.seconds,
                    md_cell(&case.detail)
                );
            }
        }
    }
    s
}

/// Where the settings that trade latency for throughput are: each backend runs with its
/// defaults unless its URL above sets them, and its crate's docs say what each one costs.
fn settings_note(c: &Comparison) -> String {
    let networked: Vec<String> = c
        .backends
        .iter()
        .filter(|b| b.error.is_none() && !is_reference(b))
        .map(|b| format!("backends/{}/src/lib.rs", b.name))
        .collect();
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

/// The ratio, or why there is none.
fn ratio_cell(r: &BaselineRatio) -> String {
    match (r.ratio, &r.note) {
        (Some(ratio), _) => format!("{ratio:.3}"),
        (None, note) => format!("no ratio: {}", note.as_deref().unwrap_or("-")),
    }
}

fn conformance_summary(b: &BackendReport) -> String {
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

/// The self-contained HTML report: inline CSS and SVG, one small inline script that marks the
/// page rendered (a headless browser test reads the mark).
pub fn html(c: &Comparison, charts: &[(String, String)]) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mailroom compare</title><style>");
    s.push_str("body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4}.chart{display:block;margin:1em 0;border:1px solid #eee}.fail{color:#b00;font-weight:bold}.num{text-align:right}code{background:#f4f4f4;padding:1px 3px}");
    s.push_str("</style></head><body>\n<h1>mailroom compare</h1>\n");
    let _ = writeln!(
        s,
        "<p>Command: <code>{}</code><br>Started: {} — took {:.0} s<br>Machine: {}</p>",
        esc(&c.command),
        esc(&c.started),
        c.elapsed.as_secs_f64(),
        esc(&c.machine)
    );
    s.push_str("<h2>Brokers</h2><table><tr><th>backend</th><th>URL</th><th>implementation and version (as reported by the broker)</th><th>conformance</th></tr>\n");
    for b in &c.backends {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td{}>{}</td><td>{}</td></tr>",
            esc(&b.name),
            esc(&b.url),
            if b.error.is_some() {
                " class=\"fail\""
            } else {
                ""
            },
            esc(b.error.as_deref().map_or(&b.server_version, |e| e)),
            esc(&conformance_summary(b))
        );
    }
    let _ = write!(s, "</table>\n<p>{}</p>", esc(&settings_note(c)));
    s.push_str("\n<h2>Which broker for which need</h2><p>Computed from this run's numbers and from each backend's declared capabilities, checked by the conformance suite where it has a case. Nothing here is written by hand.</p><table><tr><th>need</th><th>choice</th><th>evidence</th></tr>\n");
    for n in needs(c) {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td><b>{}</b></td><td>{}</td></tr>",
            esc(&n.need),
            esc(&n.choice),
            esc(&n.evidence)
        );
    }
    s.push_str("</table>\n<h2>Charts</h2>\n");
    for (_, svg) in charts {
        s.push_str(svg);
        s.push('\n');
    }
    s.push_str("<h2>Results</h2><p>Latencies in ms. End-to-end = receive − <i>intended</i> send time (open loop: no coordinated omission); publish = confirm − actual send; publish delay = actual − intended send. Warm-up excluded.</p><table><tr>");
    for h in RESULT_HEADERS {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>\n");
    for row in results_table(c) {
        s.push_str("<tr>");
        if row.len() < RESULT_HEADERS.len() {
            let _ = write!(
                s,
                "<td>{}</td><td>{}</td><td colspan=\"{}\">{}</td>",
                esc(&row[0]),
                esc(&row[1]),
                RESULT_HEADERS.len() - 2,
                esc(row.get(2).map_or("", |s| s))
            );
        } else {
            for (i, cell) in row.iter().enumerate() {
                let class = if i >= 2 { " class=\"num\"" } else { "" };
                let _ = write!(s, "<td{class}>{}</td>", esc(cell));
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    let ratios = baseline_ratios(c);
    if !ratios.is_empty() {
        s.push_str("<h2>Abstraction overhead: mailroom vs raw client (same broker, same run)</h2><p>Each max-rate workload also ran on the raw client the backend is built on, configured as the backend configures it. Ratio = backend msgs/s ÷ raw msgs/s (moved end to end); 1.0 means the abstraction costs nothing.</p><table><tr><th>backend</th><th>raw baseline</th><th>workload</th><th>backend msgs/s</th><th>raw msgs/s</th><th>mailroom vs raw</th><th>e2e p99 backend / raw (ms)</th></tr>");
        for (b, workload, r) in &ratios {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{:.0}</td><td class=\"num\">{:.0}</td><td class=\"num\"><b>{}</b></td><td class=\"num\">{} / {}</td></tr>",
                esc(b),
                esc(&r.raw_driver),
                esc(workload),
                r.rate,
                r.raw_rate,
                esc(&ratio_cell(r)),
                ms(r.e2e_p99),
                ms(r.raw_e2e_p99)
            );
        }
        s.push_str("</table>\n");
    }
    if let Some(o) = &c.overhead {
        let _ = writeln!(
            s,
            "<h2>Harness overhead</h2><p>Raw tokio mpsc through the harness: {:.0} msgs/s; bare loop on the same channel: {:.0} msgs/s; ratio <b>{:.3}</b> (median of {} rounds of {:?}).</p>",
            o.harness_rate, o.bare_rate, o.ratio, o.rounds, o.round
        );
    }
    for b in &c.backends {
        let Some(caps) = &b.capabilities else {
            continue;
        };
        let _ = write!(
            s,
            "<h2>{} — capabilities and conformance</h2><table><tr><th>capability</th><th>declared</th></tr>",
            esc(&b.name)
        );
        for (k, v) in capability_rows(caps) {
            let _ = write!(s, "<tr><td>{k}</td><td>{}</td></tr>", esc(&v));
        }
        s.push_str("</table>");
        if !b.conformance.is_empty() {
            s.push_str("<table><tr><th>case</th><th>result</th><th>detail</th></tr>");
            for case in &b.conformance {
                let class = if case.status == "fail" {
                    " class=\"fail\""
                } else {
                    ""
                };
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td{class}>{}</td><td>{}</td></tr>",
                    esc(&case.name),
                    case.status,
                    esc(&case.detail)
                );
            }
            s.push_str("</table>");
        }
        s.push('\n');
    }
    s.push_str("<script>document.body.setAttribute('data-charts', String(document.querySelectorAll('svg.chart').length));document.body.setAttribute('data-series', String(document.querySelectorAll('svg.chart .series, svg.chart rect[fill^=\"#\"]').length));</script>\n</body></html>\n");
    s
}
