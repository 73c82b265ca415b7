//! The report's peers section: a peer library's figure beside mailroom's and the raw client's
//! on the same broker and workload, with what the peer's send and ack mean.

use std::fmt::Write as _;

use super::tables::{esc, md_cell, ratio_cell};
use crate::compare::{BackendReport, Comparison, RunOutcome};
use crate::result::{BaselineRatio, TestResult};
use crate::summary::ms;

/// Whether a result is a peer library's run (its driver is `peer-...`).
pub(super) fn is_peer(r: &TestResult) -> bool {
    r.driver.starts_with("peer-")
}

/// A backend's peer runs (kept with its baselines).
pub(super) fn peer_runs(b: &BackendReport) -> impl Iterator<Item = &TestResult> {
    b.baseline
        .iter()
        .filter_map(RunOutcome::result)
        .filter(|r| is_peer(r))
}

/// What a peer's send and ack mean: its driver's version string says it after `(peer `.
fn semantics(r: &TestResult) -> &str {
    let v = &r.mailroom.server_version;
    v.split_once("(peer ")
        .map_or(v.as_str(), |(_, s)| s.strip_suffix(')').unwrap_or(s))
}

/// One row per backend run that has a peer's run of the same workload.
struct Row<'a> {
    backend: &'a str,
    workload: &'a str,
    mailroom: f64,
    raw: Option<&'a BaselineRatio>,
    peer: &'a BaselineRatio,
    semantics: &'a str,
}

fn rows(c: &Comparison) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    for b in &c.backends {
        for r in b.runs.iter().filter_map(RunOutcome::result) {
            let Some(peer) = &r.mailroom.peer else {
                continue;
            };
            let Some(p) = peer_runs(b).find(|p| p.workload == r.workload) else {
                continue;
            };
            out.push(Row {
                backend: &b.name,
                workload: &r.workload,
                mailroom: peer.rate,
                raw: r.mailroom.baseline.as_ref(),
                peer,
                semantics: semantics(p),
            });
        }
    }
    out
}

const INTRO: &str = "Another Rust queue library on the same broker, workload and harness, right after the backend and its raw client. mailroom and the raw clients count a send once the broker confirmed it (publisher confirm, produce ack, SendMessage(Batch) reply) and ack every message they receive; what the peer's send waits for and how it acks is in the last column: a send that waits for less moves more, and is not the same guarantee.";

const HEADERS: &[&str] = &[
    "backend",
    "workload",
    "mailroom msgs/s",
    "raw msgs/s",
    "peer msgs/s",
    "mailroom vs peer",
    "e2e p99 mailroom / peer (ms)",
    "peer semantics",
];

fn cells(r: &Row<'_>) -> Vec<String> {
    vec![
        r.backend.to_owned(),
        r.workload.to_owned(),
        format!("{:.0}", r.mailroom),
        r.raw.map_or("-".to_owned(), |raw| {
            format!("{:.0} ({})", raw.raw_rate, raw.raw_driver)
        }),
        format!("{:.0} ({})", r.peer.raw_rate, r.peer.raw_driver),
        ratio_cell(r.peer),
        format!("{} / {}", ms(r.peer.e2e_p99), ms(r.peer.raw_e2e_p99)),
        r.semantics.to_owned(),
    ]
}

/// The Markdown section (empty when no peer ran).
pub fn markdown(c: &Comparison) -> String {
    let rows = rows(c);
    if rows.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n## Peers in the same run\n\n{INTRO}\n\n| {} |\n|{}\n",
        HEADERS.join(" | "),
        "---|".repeat(HEADERS.len())
    );
    for r in &rows {
        let cells: Vec<String> = cells(r).iter().map(|c| md_cell(c)).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

/// The HTML section (empty when no peer ran).
pub fn html(c: &Comparison) -> String {
    let rows = rows(c);
    if rows.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "<h2 id=\"peers\">Peers in the same run</h2><p>{}</p><table class=\"peers\"><tr>",
        esc(INTRO)
    );
    for h in HEADERS {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for r in &rows {
        s.push_str("<tr>");
        for (i, cell) in cells(r).iter().enumerate() {
            let class = if (2..7).contains(&i) {
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
