//! The report's scaling section: "how cost grows with work". Four curves (throughput and
//! end-to-end p99 against producers/consumers, and against payload size), one line per
//! backend, and a table per backend with every figure. Drawn from
//! [`crate::result::scaling::ScalingSeries`] alone, so `results/scaling.json` redraws it.

use std::fmt::Write as _;

use super::charts::line_chart;
use super::tables::{esc, md_cell};
use crate::compare::Comparison;
use crate::result::scaling::{ScalingAxis, ScalingPoint, ScalingSeries};
use crate::summary::ms;

/// The CSS class every scaling chart carries beside `chart`.
pub const CHART_CLASS: &str = "chart scaling";

fn axis_title(axis: ScalingAxis, series: &[ScalingSeries]) -> String {
    match axis {
        ScalingAxis::Clients => format!(
            "producers = consumers ({} payload)",
            series
                .first()
                .map_or("1 KiB".to_owned(), |s| crate::scaling::size_label(
                    s.settings.clients_message_size
                ))
        ),
        ScalingAxis::Payload => "payload (1 producer, 1 consumer)".to_owned(),
    }
}

/// The x labels of a curve: the first series that has it (every sweep of one run uses the
/// same points).
fn labels(axis: ScalingAxis, series: &[ScalingSeries]) -> Vec<String> {
    series
        .iter()
        .map(|s| s.curve(axis).map(|p| p.label.clone()).collect::<Vec<_>>())
        .max_by_key(Vec::len)
        .unwrap_or_default()
}

fn curve(
    s: &ScalingSeries,
    axis: ScalingAxis,
    labels: &[String],
    value: impl Fn(&ScalingPoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    s.curve(axis)
        .filter_map(|p| {
            let x = labels.iter().position(|l| *l == p.label)?;
            let y = value(p).filter(|v| v.is_finite() && *v > 0.0)?;
            Some((x as f64, y))
        })
        .collect()
}

fn chart(
    series: &[ScalingSeries],
    axis: ScalingAxis,
    title: &str,
    y_title: &str,
    value: impl Fn(&ScalingPoint) -> Option<f64> + Copy,
) -> String {
    let xs = labels(axis, series);
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.backend.clone(), curve(s, axis, &xs, value)))
        .collect();
    line_chart(title, &axis_title(axis, series), y_title, &xs, &lines, true).replacen(
        "class=\"chart\"",
        &format!("class=\"{CHART_CLASS}\""),
        1,
    )
}

/// The four scaling charts as (file stem, SVG); none without a sweep.
pub fn charts(c: &Comparison) -> Vec<(String, String)> {
    let s = &c.scaling;
    if s.is_empty() {
        return Vec::new();
    }
    let load = s.first().map_or(0.5, |s| s.settings.load_fraction) * 100.0;
    let p99 = |p: &ScalingPoint| (p.latency_rate > 0.0).then_some(p.e2e_p99);
    vec![
        (
            "scaling-clients-throughput".to_owned(),
            chart(
                s,
                ScalingAxis::Clients,
                "Saturated throughput as producers and consumers are added",
                "msgs/s (log scale)",
                |p| Some(p.throughput),
            ),
        ),
        (
            "scaling-clients-p99".to_owned(),
            chart(
                s,
                ScalingAxis::Clients,
                &format!(
                    "End-to-end p99 as producers and consumers are added ({load:.0} % of each point's saturated rate)"
                ),
                "ms (log scale)",
                p99,
            ),
        ),
        (
            "scaling-payload-throughput".to_owned(),
            chart(
                s,
                ScalingAxis::Payload,
                "Saturated throughput as payloads grow",
                "MB/s of payload (log scale)",
                |p| Some(p.megabytes_per_second),
            ),
        ),
        (
            "scaling-payload-p99".to_owned(),
            chart(
                s,
                ScalingAxis::Payload,
                &format!(
                    "End-to-end p99 as payloads grow ({load:.0} % of each point's saturated rate)"
                ),
                "ms (log scale)",
                p99,
            ),
        ),
    ]
}

/// How the sweep ran, in one paragraph.
fn method(s: &ScalingSeries) -> String {
    let t = &s.settings;
    format!(
        "Each point: a fresh topic, N producers and N consumers on one subscription (N \
         partitions where the broker partitions), first saturated in a closed loop — every send \
         confirmed, at most {} KiB of payload sent but not yet received, so the queue stays \
         bounded — measured for {:.1} s after {:.1} s of warm-up from the first message; \
         throughput is what consumers received and acked per second. Then an open-loop run at \
         {:.0} % of that throughput ({:.1} s, intended send times, no coordinated omission) \
         gives the end-to-end p50 and p99. Payloads larger than a backend's declared \
         max_message_size are replaced by the largest whole KiB that fits, and the row says so. \
         memory:// hands payloads over by reference, so its MB/s is not a copy rate; with large \
         payloads the in-flight bound leaves few messages in flight (32 at 256 KiB), which is \
         what limits it there.",
        t.in_flight_bytes / 1024,
        t.step_seconds,
        t.warmup_seconds,
        t.load_fraction * 100.0,
        t.step_seconds,
    )
}

const HEADERS: &[&str] = &[
    "curve",
    "point",
    "producers / consumers",
    "partitions",
    "payload bytes",
    "saturated msgs/s",
    "MB/s",
    "latency run msgs/s",
    "e2e p50",
    "e2e p99",
    "note",
];

fn row(p: &ScalingPoint) -> Vec<String> {
    let measured = p.measured();
    let latency = measured && p.latency_rate > 0.0;
    let mut note = p.note.clone().unwrap_or_default();
    if latency && !p.latency_sustained {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str("the latency run fell short of its rate");
    }
    vec![
        match p.axis {
            ScalingAxis::Clients => "clients".to_owned(),
            ScalingAxis::Payload => "payload".to_owned(),
        },
        p.label.clone(),
        format!("{} / {}", p.producers, p.consumers),
        p.partitions.to_string(),
        p.message_size.to_string(),
        if measured {
            format!("{:.0}", p.throughput)
        } else {
            "-".to_owned()
        },
        if measured {
            format!("{:.2}", p.megabytes_per_second)
        } else {
            "-".to_owned()
        },
        if latency {
            format!("{:.0}", p.latency_rate)
        } else {
            "-".to_owned()
        },
        if latency {
            ms(p.e2e_p50)
        } else {
            "-".to_owned()
        },
        if latency {
            ms(p.e2e_p99)
        } else {
            "-".to_owned()
        },
        note,
    ]
}

/// The Markdown section (empty without a sweep).
pub fn markdown(c: &Comparison) -> String {
    let mut s = String::new();
    let Some(first) = c.scaling.first() else {
        return s;
    };
    let _ = writeln!(s, "\n## How cost grows with work\n\n{}\n", method(first));
    for series in &c.scaling {
        let _ = writeln!(
            s,
            "### {} (`{}`, {:.0} s)\n\n| {} |\n|{}",
            series.backend,
            series.url,
            series.seconds,
            HEADERS.join(" | "),
            "---|".repeat(HEADERS.len())
        );
        for p in &series.points {
            let cells: Vec<String> = row(p).iter().map(|c| md_cell(c)).collect();
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s.push('\n');
    }
    s
}

/// The HTML section (empty without a sweep); the charts are drawn with the others.
pub fn html(c: &Comparison) -> String {
    let mut s = String::new();
    let Some(first) = c.scaling.first() else {
        return s;
    };
    let _ = writeln!(
        s,
        "<h2 id=\"scaling\">How cost grows with work</h2><p>{}</p>",
        esc(&method(first))
    );
    for series in &c.scaling {
        let _ = write!(
            s,
            "<h3>{} (<code>{}</code>, {:.0} s)</h3><table class=\"scaling\" data-backend=\"{}\"><tr>",
            esc(&series.backend),
            esc(&series.url),
            series.seconds,
            esc(&series.backend)
        );
        for h in HEADERS {
            let _ = write!(s, "<th>{}</th>", esc(h));
        }
        s.push_str("</tr>");
        for p in &series.points {
            s.push_str("<tr>");
            for (i, cell) in row(p).iter().enumerate() {
                let class = if (2..HEADERS.len() - 1).contains(&i) {
                    " class=\"num\""
                } else {
                    ""
                };
                let _ = write!(s, "<td{class}>{}</td>", esc(cell));
            }
            s.push_str("</tr>");
        }
        s.push_str("</table>\n");
    }
    s
}
