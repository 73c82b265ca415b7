//! The report's SVG charts: throughput bars and latency curves.

use std::fmt::Write as _;

use super::select::{done, is_backlog, is_max_rate, latency_workload, moved};
use super::tables::esc;
use crate::compare::{Comparison, RunOutcome};
use crate::result::{MaxRate, TestResult};

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

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

/// A line chart; `xs` label the x positions (equally spaced), y is log10 when `log_y`. Each
/// curve carries its series name (`data-name`) so a browser test can find it.
pub(super) fn line_chart(
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
            "<polyline class=\"series\" data-name=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            esc(name),
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
            bars.push(bar(b.label(), r));
        }
        if let Some(r) = b
            .baseline
            .iter()
            .filter_map(RunOutcome::result)
            .find(|r| is_max_rate(r) && !super::peers::is_peer(r))
        {
            bars.push(bar(format!("{} (raw baseline)", r.driver), r));
        }
        for r in super::peers::peer_runs(b).filter(|r| is_max_rate(r)) {
            bars.push(bar(format!("{} on {} (peer)", r.driver, b.label()), r));
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
                series.push((b.label(), points));
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
                b.label(),
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
    out.extend(super::scaling::charts(c));
    out
}
