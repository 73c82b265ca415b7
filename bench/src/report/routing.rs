//! The report's routing section: a topic-pattern subscriber taking 1 message in 10, on brokers
//! that route natively and on those whose client routes, measured in the same run.

use std::fmt::Write as _;

use mailroom_core::Implementation;

use super::select::is_reference;
use super::tables::{esc, md_cell};
use crate::compare::{BackendReport, Comparison};
use crate::routing_cost::{self, RoutingCost};

fn intro() -> String {
    format!(
        "The same workload on every backend with topic exchanges, in this run: {} messages of {} B \
         sent to a topic exchange in runs of {} per routing key over {} keys, one queue per key \
         bound with `order.rK.*`; the subscriber measured (`{}`) takes 1 in {}. The exchange is \
         filled, then that queue's consumer drains its share, acking each message; msgs/s counts its deliveries from the first to the last. \
         A broker that routes natively hands the subscriber only its share; where routing is \
         client-side, every subscriber's client reads the whole topic and drops what its \
         bindings do not match. Brokers differ in how fast they deliver at all, so each round \
         also sends the same share straight to a queue and drains it the same way: routed ÷ \
         straight is what routing costs the subscriber on that broker (rounds alternate \
         which goes first; medians of the rounds, ranges in brackets).",
        routing_cost::PUBLISHED,
        routing_cost::PAYLOAD_BYTES,
        routing_cost::RUN,
        routing_cost::KEYS,
        routing_cost::PATTERN,
        routing_cost::KEYS,
    )
}

const HEADERS: &[&str] = &[
    "backend",
    "topic exchange",
    "messages sent → delivered",
    "records the subscriber's client reads",
    "routed msgs/s",
    "straight to a queue msgs/s",
    "routed ÷ straight",
    "routed vs fastest native",
];

/// `median (low–high)`, or a dash.
fn spread(median: Option<f64>, range: Option<(f64, f64)>, digits: usize) -> String {
    match (median, range) {
        (Some(m), Some((lo, hi))) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        _ => "-".to_owned(),
    }
}

fn measured(c: &Comparison) -> Vec<(&BackendReport, &RoutingCost)> {
    c.backends
        .iter()
        .filter_map(|b| b.routing.as_ref().map(|r| (b, r)))
        .collect()
}

/// The fastest native median among the networked brokers (the in-process one if none ran).
fn fastest_native(rows: &[(&BackendReport, &RoutingCost)]) -> Option<(String, f64)> {
    let native = |networked: bool| {
        rows.iter()
            .filter(|(b, r)| {
                r.implementation == Implementation::Native && is_reference(b) != networked
            })
            .filter_map(|(b, r)| r.median().map(|m| (b.label(), m)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    native(true).or_else(|| native(false))
}

fn cells(b: &BackendReport, r: &RoutingCost, fastest: Option<&(String, f64)>) -> Vec<String> {
    let routed = if r.rounds.is_empty() {
        format!("not measured: {}", r.error.as_deref().unwrap_or("no round"))
    } else {
        format!(
            "{}, {} rounds{}",
            spread(r.median(), r.range(), 0),
            r.rounds.len(),
            r.error
                .as_deref()
                .map(|e| format!("; then failed: {e}"))
                .unwrap_or_default()
        )
    };
    let versus = match (r.median(), fastest) {
        (Some(m), Some((name, best))) if *best > 0.0 => format!("{:.2}× {name}", m / best),
        _ => "-".to_owned(),
    };
    vec![
        b.label(),
        r.implementation.to_string(),
        format!("{} → {}", r.published, r.delivered),
        r.records_read().to_string(),
        routed,
        spread(r.straight_median(), r.straight_range(), 0),
        spread(r.ratio(), r.ratio_range(), 2),
        versus,
    ]
}

/// The Markdown section (empty when routing was not measured).
pub fn markdown(c: &Comparison) -> String {
    let rows = measured(c);
    if rows.is_empty() {
        return String::new();
    }
    let fastest = fastest_native(&rows);
    let mut s = format!(
        "\n## Routing: native vs client-side (same workload, same run)\n\n{}\n\n| {} |\n|{}\n",
        intro(),
        HEADERS.join(" | "),
        "---|".repeat(HEADERS.len())
    );
    for (b, r) in &rows {
        let cells: Vec<String> = cells(b, r, fastest.as_ref())
            .iter()
            .map(|c| md_cell(c))
            .collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

/// The HTML section (empty when routing was not measured).
pub fn html(c: &Comparison) -> String {
    let rows = measured(c);
    if rows.is_empty() {
        return String::new();
    }
    let fastest = fastest_native(&rows);
    let mut s = format!(
        "<h2 id=\"routing\">Routing: native vs client-side (same workload, same run)</h2><p>{}</p><table class=\"routing\"><tr>",
        esc(&intro())
    );
    for h in HEADERS {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for (b, r) in &rows {
        s.push_str("<tr>");
        for (i, cell) in cells(b, r, fastest.as_ref()).iter().enumerate() {
            let class = if (3..8).contains(&i) {
                " class=\"num\""
            } else {
                ""
            };
            let _ = write!(s, "<td{class}>{}</td>", esc(cell));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>\n");
    s
}
