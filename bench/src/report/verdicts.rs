//! One verdict per common shape of work: the brokers with every capability it needs, ranked by
//! the figure that matters for it.

use mailroom_core::{Capability, ExchangeKind, Implementation};

use super::needs::{NeedLine, SEMANTICS};
use super::select::{done, fixed_rate_workloads, is_max_rate, moved, sustained};
use crate::compare::{declares, BackendReport, Comparison};
use crate::summary::ms;

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

/// How `b` meets `needs`, when it has them all: the conformance cases that checked them
/// (`replay_from_earliest` for replay) and the ones its client does instead of the broker, as
/// ` (checked by …; client-side: …)`, or nothing.
fn how_met(b: &BackendReport, needs: &[Capability]) -> String {
    let checked: Vec<&str> = needs
        .iter()
        .filter_map(|cap| {
            SEMANTICS
                .iter()
                .find(|(_, c, _)| c == cap)
                .and_then(|(_, _, case)| *case)
        })
        .filter(|case| b.case_passed(case) == Some(true))
        .collect();
    let client_side: Vec<String> = needs
        .iter()
        .filter(|cap| {
            b.capabilities
                .as_ref()
                .and_then(|c| c.implementation(**cap))
                == Some(Implementation::ClientSide)
        })
        .map(|cap| cap.to_string())
        .collect();
    let mut parts = Vec::new();
    if !checked.is_empty() {
        parts.push(format!("checked by {}", checked.join(", ")));
    }
    if !client_side.is_empty() {
        parts.push(format!("client-side: {}", client_side.join(", ")));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
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
pub(super) fn verdicts(c: &Comparison, contenders: &[&BackendReport]) -> Vec<NeedLine> {
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
                    unable.push(format!("{} lacks {}", b.label(), missing.join(", ")));
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
            evidence.extend(able.iter().map(|(b, figure)| {
                let how = how_met(b, shape.needs);
                match figure {
                    Some((_, text)) => format!("{}: has them all{how}, {text}", b.label()),
                    None => format!("{}: has them all{how}, no figure measured", b.label()),
                }
            }));
            evidence.extend(unable);
            let choice = match able.first() {
                Some((b, _)) if able.len() == 1 => format!("{} (the only one able)", b.label()),
                Some((b, Some(_))) => b.label(),
                Some((b, None)) => format!("{} (able; not measured)", b.label()),
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
