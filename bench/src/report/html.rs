//! The self-contained HTML report.

use std::fmt::Write as _;

use super::needs::needs;
use super::select::baseline_ratios;
use super::tables::{
    conformance_summary, esc, ratio_cell, results_table, settings_note, RESULT_HEADERS,
};
use crate::compare::{capability_rows, Comparison};
use crate::summary::ms;

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
            esc(&b.label()),
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
    s.push_str("<h2>Results</h2><p>Latencies in ms. End-to-end = receive − <i>intended</i> send time (open loop: no coordinated omission); publish = confirm − actual send; publish delay = actual − intended send. Warm-up excluded. ");
    s.push_str(&esc(super::tables::RATES_NOTE));
    s.push_str("</p><table><tr>");
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
        let _ = write!(
            s,
            "<h2>Abstraction overhead: mailroom vs raw client (same broker, same run)</h2><p>{}</p><table><tr><th>backend</th><th>raw baseline</th><th>workload</th><th>backend msgs/s</th><th>raw msgs/s</th><th>mailroom vs raw</th><th>e2e p99 backend / raw (ms)</th></tr>",
            esc(super::tables::RATIO_INTRO)
        );
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
    s.push_str(&super::peers::html(c));
    s.push_str(&super::routing::html(c));
    s.push_str(&super::scaling::html(c));
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
            esc(&b.label())
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
