//! `compare` on memory:// writes a report whose HTML renders its SVG charts in headless
//! Chromium with no console message. Chromium is Debian's (`scripts/chromium.sh` installs it);
//! the test fails, naming the script, when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mailroom_bench::compare::{self, CompareOptions};

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
    };
    let comparison = compare::compare(&options).await.unwrap();
    let (md, html) = compare::write(&comparison, &out).unwrap();
    let markdown = std::fs::read_to_string(md).unwrap();
    assert!(markdown.contains("Which broker for which need"));
    assert!(markdown.contains("mailroom-memory"), "server version named");
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
