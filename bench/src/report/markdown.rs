//! The Markdown report.

use std::fmt::Write as _;

use super::needs::needs;
use super::select::baseline_ratios;
use super::tables::{
    conformance_summary, md_cell, ratio_cell, results_table, settings_note, RESULT_HEADERS,
};
use crate::compare::{capability_rows, Comparison};
use crate::summary::ms;

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
            md_cell(&b.label()),
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
        "Latencies in ms. End-to-end = receive − *intended* send time (open loop: no coordinated omission); publish = confirm − actual send; publish delay = actual − intended send. Warm-up excluded. OMB-format JSON per run in `results/`. {}\n",
        super::tables::RATES_NOTE
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
        let _ = writeln!(s, "{}\n", super::tables::RATIO_INTRO);
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
    s.push_str(&super::peers::markdown(c));
    s.push_str(&super::routing::markdown(c));
    s.push_str(&super::scaling::markdown(c));
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
        let _ = writeln!(s, "\n## {} — capabilities and conformance\n", b.label());
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
