//! `compare`'s routing measurement on the local brokers (`scripts/brokers.sh up`): Kafka routes
//! client-side, RabbitMQ natively; both run the same topic-pattern workload, and the report
//! shows the two figures side by side with the client-side one marked.

#![cfg(all(feature = "kafka", feature = "rabbitmq"))]

use std::sync::Arc;
use std::time::Duration;

use mailroom::{Backend, Implementation};
use mailroom_bench::compare::{self, BackendReport, Comparison};
use mailroom_bench::report;
use mailroom_bench::routing_cost::{self, RoutingCost};

/// Long enough for three rounds on a loaded 2-core machine, each bounded by ROUND_LIMIT.
const LIMIT: Duration = Duration::from_secs(240);

async fn open(scheme: &str) -> Arc<dyn Backend> {
    let url = compare::local_urls(&[scheme])
        .into_iter()
        .find(|u| u.starts_with(scheme))
        .unwrap_or_else(|| panic!("no local URL for {scheme}"));
    mailroom::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e} (scripts/brokers.sh up)"))
}

async fn measured(scheme: &str) -> RoutingCost {
    let backend = open(scheme).await;
    let cost = tokio::time::timeout(LIMIT, routing_cost::measure(&backend))
        .await
        .unwrap_or_else(|_| panic!("routing cost on {scheme} took over {LIMIT:?}"))
        .unwrap_or_else(|| panic!("{scheme} declares topic exchanges"));
    let _ = backend.close().await;
    assert_eq!(cost.error, None, "{scheme}: {cost:?}");
    assert_eq!(
        cost.rounds.len(),
        routing_cost::ROUNDS,
        "{scheme}: {cost:?}"
    );
    assert!(cost.rounds.iter().all(|r| *r > 0.0), "{scheme}: {cost:?}");
    cost
}

fn reported(name: &str, backend: &Arc<dyn Backend>, routing: RoutingCost) -> BackendReport {
    BackendReport {
        url: format!("{name}://test"),
        name: name.into(),
        server_version: "test".into(),
        capabilities: Some(backend.capabilities().clone()),
        conformance: Vec::new(),
        runs: Vec::new(),
        baseline: Vec::new(),
        persistence: None,
        routing: Some(routing),
        error: None,
        variant: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_client_side_routing_is_measured_beside_rabbitmq_native_routing() {
    // Alternate the order against a machine whose load drifts: RabbitMQ first, then Kafka.
    let rabbit = measured("amqp").await;
    let kafka = measured("kafka").await;
    assert_eq!(rabbit.implementation, Implementation::Native);
    assert_eq!(kafka.implementation, Implementation::ClientSide);
    assert_eq!(
        kafka.delivered,
        routing_cost::PUBLISHED / routing_cost::KEYS
    );
    assert_eq!(kafka.records_read(), routing_cost::PUBLISHED);
    assert_eq!(rabbit.records_read(), rabbit.delivered);

    let (k, r) = (kafka.median().unwrap(), rabbit.median().unwrap());
    let kafka_ratio = kafka.ratio().unwrap();
    eprintln!(
        "rabbitmq rounds {:?}; kafka rounds {:?}",
        rabbit.rounds, kafka.rounds
    );
    let kafka_backend = open("kafka").await;
    let rabbit_backend = open("amqp").await;
    let c = Comparison {
        backends: vec![
            reported("rabbitmq", &rabbit_backend, rabbit),
            reported("kafka", &kafka_backend, kafka),
        ],
        overhead: None,
        command: "test".into(),
        started: "now".into(),
        elapsed: Duration::from_secs(1),
        machine: "test".into(),
        scaling: Vec::new(),
    };
    let md = report::markdown(&c, &[]);
    let row = md
        .lines()
        .find(|l| l.starts_with("| kafka | client-side |"))
        .unwrap_or_else(|| panic!("no Kafka routing row: {md}"));
    let native_row = md
        .lines()
        .find(|l| l.starts_with("| rabbitmq | native |"))
        .unwrap_or_else(|| panic!("no RabbitMQ routing row: {md}"));
    eprintln!("{native_row}\n{row}");
    assert!(row.contains("| 10000 → 1000 | 10000 |"), "{row}");
    let ratio = kafka_ratio;
    assert!(
        row.contains(&format!("| {ratio:.2} (")),
        "Kafka's routed ÷ straight: {row}"
    );
    assert!(
        row.contains(&format!("{:.2}× rabbitmq", k / r)),
        "the ratio to the native broker's figure: {row}"
    );
    assert!(
        md.contains("| exchange_topic | yes (client-side) |"),
        "Kafka's capability table marks it: {md}"
    );
    let html = report::html(&c, &[]);
    assert!(html.contains("id=\"routing\"") && html.contains("client-side"));
    let topic_need = report::needs(&c)
        .into_iter()
        .find(|n| n.need.contains("topic exchange"))
        .expect("the topic routing need");
    assert!(
        topic_need.evidence.contains("kafka: declared client-side"),
        "{topic_need:?}"
    );
    let _ = kafka_backend.close().await;
    let _ = rabbit_backend.close().await;
}

/// SQS routes through SNS: the broker applies each subscription's filter policy (`order.r0.*`
/// is a prefix and a word count), so the subscriber's queue holds only its share, as on
/// RabbitMQ, and the report's row says native.
#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_routing_through_sns_is_measured_as_native() {
    let sqs = measured("sqs").await;
    assert_eq!(sqs.implementation, Implementation::Native);
    assert_eq!(sqs.delivered, routing_cost::PUBLISHED / routing_cost::KEYS);
    assert_eq!(sqs.records_read(), sqs.delivered, "native: only its share");
    assert!(
        sqs.ratio().is_some_and(|r| r > 0.0),
        "routed ÷ straight measured: {sqs:?}"
    );
    let backend = open("sqs").await;
    let c = Comparison {
        backends: vec![reported("sqs", &backend, sqs)],
        overhead: None,
        command: "test".into(),
        started: "now".into(),
        elapsed: Duration::from_secs(1),
        machine: "test".into(),
        scaling: Vec::new(),
    };
    let md = report::markdown(&c, &[]);
    assert!(
        md.lines()
            .any(|l| l.starts_with("| sqs | native | 10000 → 1000 | 1000 |")),
        "{md}"
    );
    let _ = backend.close().await;
}
