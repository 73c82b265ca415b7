//! Results as a person reads them in a terminal: the summary table printed after a run, and the
//! millisecond format the tables and report share.

use std::fmt::Write as _;

use crate::result::TestResult;

/// Format milliseconds for tables: µs precision below 10 ms.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

/// A human summary table of results, one row per run.
pub fn summary_table(results: &[TestResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<10} {:>10} {:>10} {:>10} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8}",
        "workload",
        "driver",
        "target/s",
        "pub/s",
        "cons/s",
        "e2e p50",
        "p75",
        "p95",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "pub p50",
        "p99",
        "max",
        "delay99"
    );
    for r in results {
        let e = r.end_to_end();
        let p = r.publish();
        let _ = writeln!(
            out,
            "{:<44} {:<10} {:>10.0} {:>10.0} {:>10.0} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8}",
            truncate(&r.workload, 44),
            truncate(&r.driver, 10),
            r.mailroom.target_rate,
            r.mailroom.publish_rate_avg,
            r.mailroom.consume_rate_avg,
            ms(e.p50),
            ms(e.p75),
            ms(e.p95),
            ms(e.p99),
            ms(e.p999),
            ms(e.p9999),
            ms(e.max),
            ms(p.p50),
            ms(p.p99),
            ms(p.max),
            format!("{}us", r.aggregated_publish_delay_latency_99pct),
        );
    }
    let _ = writeln!(
        out,
        "(latencies in ms; e2e = receive − intended send, publish = confirm − actual send, delay = actual − intended send)"
    );
    for r in results {
        if let Some(text) = r.max_rate_text() {
            let _ = writeln!(
                out,
                "max-rate search, {} on {}: {text}",
                r.workload, r.driver
            );
        }
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
