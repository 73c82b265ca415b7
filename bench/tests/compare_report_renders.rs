//! `compare` on memory:// writes a report whose HTML renders its SVG charts in headless
//! Chromium with no console message. Chromium is Debian's (`scripts/chromium.sh` installs it);
//! the test fails, naming the script, when it is missing. The scaling test does the same for
//! the scaling curves of every broker this build has (the local brokers must be up).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mailroom_bench::compare::{self, CompareOptions};
use mailroom_bench::scaling::ScalingOptions;

#[cfg(all(feature = "rabbitmq", feature = "kafka"))]
#[path = "common/variant.rs"]
mod variant;

const CHROMIUM: &str = "/usr/bin/chromium";

fn tiny(dir: &Path, name: &str, rate: u32, extra: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "name: {name}\ntopics: 1\npartitionsPerTopic: 1\nmessageSize: 256\n\
             subscriptionsPerTopic: 1\nconsumerPerSubscription: 1\nproducersPerTopic: 1\n\
             producerRate: {rate}\ntestDurationSeconds: 1\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// Chromium's rendered DOM and its stderr (console messages are logged there as `:CONSOLE`).
fn render(page: &Path) -> (String, String) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/chromium.sh (installs Debian's chromium)"
    );
    let profile = std::env::temp_dir().join(format!(
        "mailroom-chromium-{}",
        mailroom::MessageId::generate()
    ));
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn console_errors_are_detected() {
    // The check below must be able to fail: a page with a script error shows up.
    let dir =
        std::env::temp_dir().join(format!("mailroom-bad-{}", mailroom::MessageId::generate()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("bad.html");
    std::fs::write(
        &page,
        "<html><body><script>notAFunction();</script></body></html>",
    )
    .unwrap();
    let (_, stderr) = render(&page);
    assert!(!console_lines(&stderr).is_empty(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_report_renders_its_charts_without_console_errors() {
    let dir = std::env::temp_dir().join(format!(
        "mailroom-compare-{}",
        mailroom::MessageId::generate()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let workloads = vec![
        tiny(&dir, "fixed.yaml", 500, "warmupDurationSeconds: 0.2\n"),
        tiny(
            &dir,
            "search.yaml",
            0,
            "producerStartRate: 1000\nwarmupDurationSeconds: 2\n",
        ),
        tiny(
            &dir,
            "drain.yaml",
            500,
            "consumerBacklogSizeGB: 0.0001\nwarmupDurationSeconds: 0\n",
        ),
        tiny(&dir, "parts.yaml", 500, "warmupDurationSeconds: 0\n"),
    ];
    // Make the last one ask for partitions memory:// does not have: the report must say so.
    let parts = std::fs::read_to_string(&workloads[3]).unwrap();
    std::fs::write(
        &workloads[3],
        parts.replace("partitionsPerTopic: 1", "partitionsPerTopic: 4"),
    )
    .unwrap();
    let out = dir.join("report");
    let options = CompareOptions {
        urls: vec!["memory://".into()],
        workloads,
        out_dir: out.clone(),
        conformance: true,
        overhead: false,
        baselines: true,
        restart_brokers: false,
        stats_interval: Duration::from_secs(1),
        command: "mailroom compare (test)".into(),
        scaling: None,
        peers: false,
    };
    let comparison = compare::compare(&options).await.unwrap();
    let (md, html) = compare::write(&comparison, &out).unwrap();
    let markdown = std::fs::read_to_string(md).unwrap();
    assert!(markdown.contains("Which broker for which need"));
    assert!(markdown.contains("mailroom-memory"), "server version named");
    let routing = comparison.backends[0]
        .routing
        .as_ref()
        .expect("routing measured with the conformance suite");
    assert_eq!(routing.rounds.len(), 3, "{routing:?}");
    assert!(
        markdown.contains("## Routing: native vs client-side")
            && markdown.contains("| memory | native | 10000 → 1000 | 1000 |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("partitionsPerTopic"),
        "unexpressible workload reported"
    );
    assert!(out.join("results").read_dir().unwrap().count() >= 3);

    let (dom, stderr) = render(&html);
    assert!(
        dom.contains("data-charts=\"3\""),
        "charts not counted by the page's script: {}",
        &dom[..dom.len().min(400)]
    );
    assert!(dom.matches("<svg").count() >= 3);
    assert!(dom.contains("<polyline"), "latency / backlog curves drawn");
    let console = console_lines(&stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");
}

/// A report with RabbitMQ twice (classic queues and the stream-queue variant) renders with the
/// variant in its own rows and sections, its charts drawn, and no console message.
#[cfg(all(feature = "rabbitmq", feature = "kafka"))]
#[test]
fn a_report_with_a_broker_variant_renders_it_as_an_entry_of_its_own() {
    let dir = std::env::temp_dir().join(format!(
        "mailroom-variant-render-{}",
        mailroom::MessageId::generate()
    ));
    let c = variant::comparison(5_000.0, 90_000.0, "pass", "pass");
    let (_, html) = compare::write(&c, &dir).unwrap();
    let (dom, stderr) = render(&html);
    let streams = variant::STREAMS;
    assert!(
        dom.contains(&format!(
            "<h2>{streams} — capabilities and conformance</h2>"
        )) && dom.contains(&format!("<td>{streams}</td>"))
            && dom.contains("yes (client-side)"),
        "{}",
        &dom[..dom.len().min(2000)]
    );
    assert!(
        dom.contains("data-charts=\"") && !dom.contains("data-charts=\"0\""),
        "charts drawn: {}",
        &dom[..dom.len().min(400)]
    );
    assert!(
        dom.contains("<rect") && dom.contains(streams),
        "the throughput chart has the variant's bar"
    );
    let console = console_lines(&stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The polylines of the scaling charts in a rendered page: (chart title, series name, points).
fn scaling_curves(dom: &str) -> Vec<(String, String, usize)> {
    let class = format!("class=\"{}\"", mailroom_bench::report::SCALING_CHART_CLASS);
    let mut curves = Vec::new();
    for chart in dom.split("<svg").skip(1) {
        let chart = chart.split("</svg>").next().unwrap_or_default();
        if !chart.contains(&class) {
            continue;
        }
        let title = chart
            .split("<title>")
            .nth(1)
            .and_then(|t| t.split("</title>").next())
            .unwrap_or_default()
            .to_owned();
        for line in chart.split("<polyline").skip(1) {
            let attr = |name: &str| {
                line.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            let points = attr("points").split_whitespace().count();
            curves.push((title.clone(), attr("data-name"), points));
        }
    }
    curves
}

/// `compare --scaling` on every broker this build has (the local ones `scripts/brokers.sh up`
/// starts, and memory://), with a tiny sweep: every point is measured, the curves are in the
/// result JSON (read back equal), and the HTML draws a curve per broker in each of the four
/// scaling charts, checked in headless Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_curves_render_for_every_broker() {
    let dir = std::env::temp_dir().join(format!(
        "mailroom-scaling-{}",
        mailroom::MessageId::generate()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let urls = compare::local_urls(&mailroom::registry().schemes());
    // A broker's variants share its defaults' sweep: one sweep per broker.
    let brokers = urls
        .iter()
        .filter(|u| compare::variant_of(u).is_none())
        .count();
    let out = dir.join("report");
    let options = CompareOptions {
        urls: urls.clone(),
        workloads: vec![tiny(&dir, "fixed.yaml", 200, "warmupDurationSeconds: 0\n")],
        out_dir: out.clone(),
        conformance: false,
        overhead: false,
        baselines: false,
        restart_brokers: false,
        stats_interval: Duration::from_secs(1),
        command: "mailroom compare --scaling (test)".into(),
        scaling: Some(ScalingOptions {
            counts: vec![1, 2],
            sizes: vec![100, 16 * 1024],
            // A second per phase: a 300 ms window fell inside one of Kafka's produce stalls
            // (e2e p99 ~180 ms, publish max ~60 ms while this binary's other tests ran) and
            // confirmed nothing, which the sweep rightly reports as a failed point.
            step: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            ..ScalingOptions::default()
        }),
        peers: false,
    };
    let comparison = compare::compare(&options).await.unwrap();
    assert_eq!(comparison.scaling.len(), brokers, "a sweep per broker");
    for series in &comparison.scaling {
        assert_eq!(series.points.len(), 4, "{series:#?}");
        for p in &series.points {
            assert!(
                p.measured() && p.latency_rate > 0.0 && p.e2e_p99 > 0.0,
                "{} {:?} {}: {p:#?}",
                series.backend,
                p.axis,
                p.label
            );
        }
    }
    let (md, html) = compare::write(&comparison, &out).unwrap();
    // The result JSON holds the curves: the report drawn from it again is the same.
    let mut again = comparison.clone();
    again.scaling = compare::read_scaling(&out).unwrap();
    assert_eq!(again.scaling.len(), comparison.scaling.len());
    let charts = mailroom_bench::report::charts(&comparison);
    assert_eq!(mailroom_bench::report::charts(&again), charts);
    let markdown = std::fs::read_to_string(md).unwrap();
    assert_eq!(mailroom_bench::report::markdown(&again, &charts), markdown);
    assert!(
        markdown.contains("## How cost grows with work"),
        "{markdown}"
    );

    let (dom, stderr) = render(&html);
    let curves = scaling_curves(&dom);
    let titles: std::collections::BTreeSet<&str> =
        curves.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(titles.len(), 4, "four scaling charts: {titles:?}");
    for series in &comparison.scaling {
        for title in &titles {
            assert!(
                curves
                    .iter()
                    .any(|(t, name, points)| t == title && *name == series.backend && *points == 2),
                "no two-point curve for {} in '{title}': {curves:?}",
                series.backend
            );
        }
    }
    let console = console_lines(&stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");
}
