//! A comparison with RabbitMQ twice, on classic queues and as its stream-queue variant
//! (`?queue_type=stream`), beside Kafka and the in-process reference line: the capabilities are
//! the backends' own declarations, the figures and case outcomes are given by each test.
//! Included by path (`#[path = "common/variant.rs"]`) by the tests that read it.

#![allow(dead_code)] // each test file uses part of it

use std::time::Duration;

use mailroom::Capabilities;
use mailroom_bench::compare::{BackendReport, CaseLine, Comparison, RunOutcome};
use mailroom_bench::result::{MaxRate, TestResult};

/// The stream variant's report label.
pub const STREAMS: &str = "rabbitmq (stream queues)";

/// The classic-queue URL, and the stream variant's.
pub const CLASSIC_URL: &str = "amqp://guest:***@127.0.0.1:5672/%2f";
pub const STREAM_URL: &str = "amqp://guest:***@127.0.0.1:5672/%2f?queue_type=stream";

/// A max-rate run moving `rate` msgs/s, as `driver`.
pub fn max_rate(driver: &str, rate: f64) -> RunOutcome {
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
}

/// A fixed-rate run at 2,000 msgs/s with an e2e p99 of `p99` ms, as `driver`.
pub fn latency(driver: &str, p99: f64) -> RunOutcome {
    let mut r = TestResult {
        workload: "1 topic / 1kb".into(),
        driver: driver.into(),
        aggregated_end_to_end_latency_99pct: p99,
        aggregated_end_to_end_latency_50pct: p99 / 4.0,
        aggregated_end_to_end_latency_max: p99 * 2.0,
        ..TestResult::default()
    };
    r.mailroom.target_rate = 2_000.0;
    r.mailroom.publish_rate_avg = 2_000.0;
    r.mailroom.consume_rate_avg = 2_000.0;
    r.mailroom.subscriptions = 1;
    RunOutcome::Done(Box::new(r))
}

/// A conformance case line.
pub fn case(name: &str, status: &'static str, detail: &str) -> CaseLine {
    CaseLine {
        name: name.into(),
        status,
        detail: detail.into(),
        seconds: 1.0,
    }
}

fn rabbit_caps(url: &str) -> Capabilities {
    let config = mailroom_rabbitmq::RabbitConfig::from_url(url).expect("a RabbitMQ URL");
    mailroom_rabbitmq::capabilities(&config)
}

fn entry(
    url: &str,
    name: &str,
    variant: Option<&str>,
    capabilities: Capabilities,
    runs: Vec<RunOutcome>,
    conformance: Vec<CaseLine>,
) -> BackendReport {
    BackendReport {
        url: url.into(),
        name: name.into(),
        server_version: "test".into(),
        capabilities: Some(capabilities),
        conformance,
        runs,
        baseline: Vec::new(),
        persistence: None,
        routing: None,
        error: None,
        variant: variant.map(str::to_owned),
    }
}

/// memory://, RabbitMQ classic, RabbitMQ streams and Kafka, in that order, with the max-rate
/// figures given and a 2,000 msgs/s latency run each. The stream variant's and Kafka's replay
/// cases have the outcomes given (`"pass"` / `"fail"`).
pub fn comparison(
    stream_rate: f64,
    kafka_rate: f64,
    stream_replay: &'static str,
    kafka_replay: &'static str,
) -> Comparison {
    let replay = |status| {
        case(
            "replay_from_earliest",
            status,
            if status == "pass" {
                "5 replayed of 5"
            } else {
                "got 0 of 5 back"
            },
        )
    };
    let kafka_caps = mailroom_kafka::capabilities(
        &mailroom_kafka::KafkaConfig::from_url("kafka://127.0.0.1:9092").unwrap(),
    );
    let mut memory_caps = Capabilities::default();
    memory_caps.replay = true;
    memory_caps.per_key_ordering = true;
    Comparison {
        backends: vec![
            entry(
                "memory://",
                "memory",
                None,
                memory_caps,
                vec![max_rate("memory", 600_000.0), latency("memory", 1.0)],
                vec![replay("pass")],
            ),
            entry(
                CLASSIC_URL,
                "rabbitmq",
                None,
                rabbit_caps("amqp://h"),
                vec![max_rate("rabbitmq", 7_000.0), latency("rabbitmq", 3.0)],
                vec![case("replay_from_earliest", "skip", "declares no replay")],
            ),
            entry(
                STREAM_URL,
                "rabbitmq",
                Some("stream queues"),
                rabbit_caps("amqp://h?queue_type=stream"),
                vec![max_rate(STREAMS, stream_rate), latency(STREAMS, 4.0)],
                vec![
                    replay(stream_replay),
                    case("per_key_order", "pass", "16 keys x 40"),
                    case(
                        "competing_consumers_share",
                        "skip",
                        "declares no competing_consumers",
                    ),
                ],
            ),
            entry(
                "kafka://127.0.0.1:9092",
                "kafka",
                None,
                kafka_caps,
                vec![max_rate("kafka", kafka_rate), latency("kafka", 8.0)],
                vec![replay(kafka_replay), case("per_key_order", "pass", "")],
            ),
        ],
        overhead: None,
        command: "test".into(),
        started: "now".into(),
        elapsed: Duration::from_secs(1),
        machine: "test".into(),
        scaling: Vec::new(),
    }
}
