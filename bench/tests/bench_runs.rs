//! The bench moves every message and reports sane figures (no speed is asserted here; speed is
//! what `mailroom bench` prints), and `compare` writes the raw-mpsc ratio in every format. The
//! `mailroom bench` command's own runs beside each raw-client baseline are tested in the CLI
//! crate (`cli/tests/bench_cli.rs`).

use std::time::Duration;

use mailroom_bench::compare::{self, CompareOptions};
use mailroom_bench::report;
use mailroom_bench::{self as bench, BenchConfig};

mod common;
use common::{tmp, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_moves_every_message_on_memory_and_on_raw_mpsc() {
    let config = BenchConfig {
        messages: 20_000,
        latency_rate: 5_000,
        latency_duration: Duration::from_millis(400),
        ..BenchConfig::default()
    };
    let backend = mailroom::connect("memory://").await.unwrap();
    let t = bench::throughput(backend.clone(), &config).await.unwrap();
    assert_eq!(t.messages, 20_000);
    assert!(t.rate() > 0.0);
    let l = bench::latency(backend, &config).await.unwrap();
    assert_eq!(l.count, 2_000);
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us);
    let raw = bench::throughput_raw_mpsc(&config).await;
    assert_eq!(raw.messages, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_writes_the_ratio_in_markdown_html_and_json() {
    let dir = tmp();
    let options = CompareOptions {
        urls: vec!["memory://".into()],
        workloads: vec![workload(&dir, 0, 2_000)],
        out_dir: dir.join("report"),
        conformance: false,
        overhead: false,
        baselines: true,
        restart_brokers: false,
        stats_interval: Duration::from_secs(10),
        command: "test".into(),
        scaling: None,
        peers: false,
    };
    let comparison = compare::compare(&options).await.unwrap();
    let ratios = report::baseline_ratios(&comparison);
    let [(backend, _, ratio)] = ratios.as_slice() else {
        panic!("one ratio expected: {ratios:?}");
    };
    assert_eq!(backend, "memory");
    assert_eq!(ratio.raw_driver, "raw-mpsc");
    // The mpsc floor always finds a rate: a ratio must be there.
    assert!(ratio.ratio.is_some_and(|r| r > 0.0), "{ratio:?}");
    let (md, html) = compare::write(&comparison, &options.out_dir).unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.contains("mailroom vs raw"), "{md}");
    assert!(md.contains("| memory | raw-mpsc |"), "{md}");
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("mailroom vs raw"));
    let json = std::fs::read_dir(options.out_dir.join("results"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
        .find(|v| v["driver"] == "memory")
        .expect("the memory result");
    assert!(json["mailroom"]["baseline"]["ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(json["mailroom"]["maxRate"]["outcome"], "found");
}

/// The peer (omniqueue's in-memory backend) runs beside raw and mailroom, and the report shows
/// its figure with what its send and ack mean.
#[cfg(feature = "peers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_shows_the_peer_beside_raw_and_mailroom() {
    let dir = tmp();
    let options = CompareOptions {
        urls: vec!["memory://".into()],
        workloads: vec![workload(&dir, 0, 2_000)],
        out_dir: dir.join("report"),
        conformance: false,
        overhead: false,
        baselines: true,
        restart_brokers: false,
        stats_interval: Duration::from_secs(10),
        command: "test".into(),
        scaling: None,
        peers: true,
    };
    let comparison = compare::compare(&options).await.unwrap();
    let memory = &comparison.backends[0];
    let run = memory.runs[0].result().expect("the memory run");
    let peer = run
        .mailroom
        .peer
        .as_ref()
        .expect("a ratio against the peer");
    assert_eq!(peer.raw_driver, "peer-omniqueue");
    assert!(peer.raw_rate > 0.0, "{peer:?}");
    assert!(peer.ratio.is_some_and(|r| r > 0.0), "{peer:?}");
    let peer_run = memory
        .baseline
        .iter()
        .filter_map(|o| o.result())
        .find(|r| r.driver == "peer-omniqueue")
        .expect("the peer's own result");
    assert!(peer_run.mailroom.messages_received > 0);
    let (md, html) = compare::write(&comparison, &options.out_dir).unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.contains("## Peers in the same run"), "{md}");
    assert!(
        md.contains("unbounded tokio mpsc"),
        "semantics beside the figure: {md}"
    );
    assert!(
        md.contains(" (peer-omniqueue) | "),
        "the peer's msgs/s cell: {md}"
    );
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("<table class=\"peers\">"));
    assert!(
        html.contains("peer-omniqueue on memory (peer)"),
        "the peer's bar in the throughput chart"
    );
    // One peer runs beside several backends: its result file names the backend.
    let files: Vec<String> = std::fs::read_dir(options.out_dir.join("results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("memory-peer-omniqueue-")),
        "{files:?}"
    );
}

#[test]
fn report_says_no_sustainable_rate_instead_of_a_throughput() {
    use mailroom_bench::compare::{BackendReport, Comparison, RunOutcome};
    use mailroom_bench::result::{BaselineRatio, MaxRate, TestResult};

    let result = |driver: &str, rate: f64, outcome: MaxRate| {
        let mut r = TestResult {
            workload: "max rate".into(),
            driver: driver.into(),
            ..TestResult::default()
        };
        r.mailroom.rate_search = vec![(0.5, 10_000.0, 9_000)];
        r.mailroom.target_rate = rate;
        r.mailroom.publish_rate_avg = rate;
        r.mailroom.consume_rate_avg = rate;
        r.mailroom.max_rate = Some(outcome);
        r
    };
    let stuck = MaxRate::NotFound {
        lowest_step: 100.0,
        reason: "consumers took 3 msgs/s of 100 published; backlog grew to 900".into(),
    };
    let mut kafka = result("kafka", 100.0, stuck);
    let raw = result("raw-rdkafka", 4000.0, MaxRate::Found { rate: 4000.0 });
    kafka.mailroom.baseline = Some(BaselineRatio::of(&kafka, &raw));
    let rabbit = result("rabbitmq", 3000.0, MaxRate::Found { rate: 3000.0 });
    let backend = |name: &str, runs: Vec<TestResult>, baseline: Vec<TestResult>| BackendReport {
        url: format!("{name}://"),
        name: name.into(),
        server_version: "test".into(),
        capabilities: None,
        conformance: Vec::new(),
        runs: runs
            .into_iter()
            .map(|r| RunOutcome::Done(Box::new(r)))
            .collect(),
        baseline: baseline
            .into_iter()
            .map(|r| RunOutcome::Done(Box::new(r)))
            .collect(),
        persistence: None,
        routing: None,
        error: None,
        variant: None,
    };
    let c = Comparison {
        backends: vec![
            backend("kafka", vec![kafka], vec![raw]),
            backend("rabbitmq", vec![rabbit], Vec::new()),
        ],
        overhead: None,
        command: "test".into(),
        started: "now".into(),
        elapsed: Duration::from_secs(1),
        machine: "test".into(),
        scaling: Vec::new(),
    };
    let throughput = &report::needs(&c)[0];
    assert_eq!(
        throughput.choice,
        "rabbitmq (the only one that found a sustainable rate)"
    );
    assert!(
        throughput.evidence.contains(
            "kafka: no sustainable rate found (lowest step 100 msgs/s: consumers took 3 msgs/s"
        ),
        "{}",
        throughput.evidence
    );
    let charts = report::charts(&c);
    let md = report::markdown(&c, &charts);
    assert!(
        md.contains("no ratio: kafka: no sustainable rate found"),
        "{md}"
    );
    assert!(
        md.contains("100 (lowest step; no sustainable rate)"),
        "{md}"
    );
    let svg = &charts.iter().find(|(n, _)| n == "throughput").unwrap().1;
    assert!(
        svg.contains("no sustainable rate (lowest step 100 msgs/s)"),
        "{svg}"
    );
}

#[test]
fn the_choice_is_among_networked_brokers_and_each_shape_of_work_gets_a_verdict() {
    use mailroom::Capabilities;
    use mailroom_bench::compare::{BackendReport, CaseLine, Comparison, RunOutcome};
    use mailroom_bench::result::{MaxRate, TestResult};

    let max_rate = |driver: &str, rate: f64| {
        let mut r = TestResult {
            workload: "max rate".into(),
            driver: driver.into(),
            ..TestResult::default()
        };
        r.mailroom.rate_search = vec![(0.5, rate, 9_000)];
        r.mailroom.target_rate = rate;
        r.mailroom.publish_rate_avg = rate;
        r.mailroom.consume_rate_avg = rate;
        r.mailroom.max_rate = Some(MaxRate::Found { rate });
        RunOutcome::Done(Box::new(r))
    };
    let pass = |name: &str, detail: &str| CaseLine {
        name: name.into(),
        status: "pass",
        detail: detail.into(),
        seconds: 1.0,
    };
    let backend = |url: &str, name: &str, caps: Capabilities, rate: f64, cases: Vec<CaseLine>| {
        BackendReport {
            url: url.into(),
            name: name.into(),
            server_version: "test".into(),
            capabilities: Some(caps),
            conformance: cases,
            runs: vec![max_rate(name, rate)],
            baseline: Vec::new(),
            persistence: None,
            routing: None,
            error: None,
            variant: None,
        }
    };
    let mut queue_caps = Capabilities::default();
    queue_caps.competing_consumers = true;
    queue_caps.attempt_count = true;
    queue_caps.dead_letter = true;
    queue_caps.max_delivery_attempts = true;
    let mut log_caps = queue_caps.clone();
    log_caps.replay = true;
    log_caps.persistence = true;
    log_caps.per_key_ordering = true;
    log_caps.partitioned_queues = true;
    let c = Comparison {
        backends: vec![
            backend(
                "memory://",
                "memory",
                log_caps.clone(),
                600_000.0,
                Vec::new(),
            ),
            backend("amqp://x", "rabbitmq", queue_caps, 7_000.0, Vec::new()),
            backend(
                "kafka://x",
                "kafka",
                log_caps,
                20_000.0,
                vec![pass("competing_consumers_share", "split 503 / 497")],
            ),
        ],
        overhead: None,
        command: "test".into(),
        started: "now".into(),
        elapsed: Duration::from_secs(1),
        machine: "test".into(),
        scaling: Vec::new(),
    };
    let lines = report::needs(&c);
    let line = |need: &str| {
        lines
            .iter()
            .find(|l| l.need.starts_with(need))
            .unwrap_or_else(|| panic!("no line {need:?} in {lines:?}"))
    };
    let throughput = line("Highest sustainable throughput");
    assert_eq!(throughput.choice, "kafka", "{throughput:?}");
    assert!(
        throughput
            .evidence
            .contains("reference line, in-process (not a choice): memory: 600000 msgs/s"),
        "{throughput:?}"
    );
    let sharing = line("Competing consumers");
    assert!(
        sharing
            .evidence
            .contains("(split 503 / 497); work is shared per partition"),
        "{sharing:?}"
    );
    let log = line("Verdict: event log with replay");
    assert_eq!(log.choice, "kafka (the only one able)", "{log:?}");
    assert!(log.evidence.contains("rabbitmq lacks replay"), "{log:?}");
    let tasks = line("Verdict: task queue with retries");
    assert!(
        tasks.evidence.contains("kafka: has them all")
            && tasks.evidence.contains("rabbitmq: has them all"),
        "{tasks:?}"
    );
    assert!(
        !lines.iter().any(|l| l.choice.contains("memory")),
        "{lines:?}"
    );
    let md = report::markdown(&c, &[]);
    assert!(
        md.contains(
            "\"Latency and throughput\" section of backends/rabbitmq/src/lib.rs, \
             backends/kafka/src/lib.rs"
        ),
        "{md}"
    );
}
