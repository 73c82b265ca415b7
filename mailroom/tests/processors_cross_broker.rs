//! RabbitMQ → pipeline → Kafka: 10,000 messages bridged through a `mailroom-processors`
//! pipeline between two real brokers, with none lost (duplicates are counted and reported, as
//! at-least-once allows them).
//!
//! Needs both brokers on loopback (`scripts/brokers.sh`):
//! `cargo test -p mailroom --features rabbitmq,kafka --test processors_cross_broker -- --nocapture`
//! with `MAILROOM_RABBITMQ_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) and
//! `MAILROOM_KAFKA_URL` (default `kafka://127.0.0.1:9092`).
#![cfg(all(feature = "rabbitmq", feature = "kafka"))]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::processors::{Pipeline, Sink};
use mailroom::{ConsumerOptions, Destination, Message, MessageId, Producer, QueueSpec};

const MESSAGES: usize = 10_000;
/// Generous: the machine running this may be loaded; nothing here measures speed.
const DEADLINE: Duration = Duration::from_secs(600);
const SOURCE_HEADER: &str = "x-bridge-source-id";

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn fresh(prefix: &str) -> String {
    // Letters, digits and dashes only: valid as a RabbitMQ queue and as a Kafka topic.
    format!("{prefix}-{}", MessageId::generate())
}

/// Connect, retrying for a while: a broker restarted by another test may still be starting.
async fn connect(url: &str) -> Arc<dyn mailroom::Backend> {
    let started = Instant::now();
    loop {
        match mailroom::connect(url).await {
            Ok(broker) => return broker,
            Err(e) if e.is_temporary() && started.elapsed() < Duration::from_secs(60) => {
                eprintln!(
                    "{} not reachable yet ({e}); retrying",
                    mailroom::url::redact(url)
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("broker not reachable (scripts/brokers.sh): {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_rabbitmq_to_kafka_none_lost() {
    let rabbit = connect(&url(
        "MAILROOM_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    ))
    .await;
    let kafka = connect(&url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092")).await;

    let input = fresh("xb-in");
    // On Kafka a queue is a topic plus the consumer group of the same name.
    let output = fresh("xb-out");
    rabbit
        .topology()
        .declare_queue(&QueueSpec::new(&input))
        .await
        .unwrap();
    kafka
        .topology()
        .declare_queue(&QueueSpec::new(&output).partitions(3))
        .await
        .unwrap();

    // Fill the RabbitMQ queue; the index is the payload and the key.
    let feeder = rabbit.producer().await.unwrap();
    let inputs: Vec<Message> = (0..MESSAGES)
        .map(|i| {
            Message::builder(format!("{i}"))
                .key(format!("k{}", i % 64))
                .build()
                .unwrap()
        })
        .collect();
    for chunk in inputs.chunks(500) {
        for result in feeder
            .send_batch(&Destination::queue(&input), chunk.to_vec())
            .await
            .unwrap()
        {
            result.unwrap();
        }
    }
    feeder.close().await.unwrap();

    // The bridge: RabbitMQ consumer → stamp the source id, keep the key → Kafka producer.
    let source = rabbit
        .consumer(&input, ConsumerOptions::default().prefetch(500))
        .await
        .unwrap();
    let sink: Arc<dyn Producer> = Arc::from(kafka.producer().await.unwrap());
    let pipeline = Pipeline::builder()
        .max_in_flight(1000)
        .source(source)
        .flow()
        .map("stamp", |m: Message| {
            let id = m.id().to_string();
            let mut builder = Message::builder(m.payload().clone()).header(SOURCE_HEADER, id);
            if let Some(key) = m.key() {
                builder = builder.key(key);
            }
            builder.build().unwrap_or(m)
        })
        .to(Sink::new(sink, Destination::queue(&output)))
        .unwrap();
    let handle = pipeline.spawn();

    // Read Kafka until every index has arrived at least once.
    let mut reader = kafka.consumer(&output, Default::default()).await.unwrap();
    let mut seen: HashMap<usize, u32> = HashMap::with_capacity(MESSAGES);
    let started = Instant::now();
    while seen.len() < MESSAGES {
        assert!(
            started.elapsed() < DEADLINE,
            "only {} of {MESSAGES} distinct messages reached Kafka in {DEADLINE:?}; pipeline: {:?}",
            seen.len(),
            handle.metrics().snapshot()
        );
        assert!(
            !handle.is_finished(),
            "the pipeline stopped early: {:?}",
            handle.shutdown().await
        );
        let Some(delivery) = reader
            .receive_timeout(Duration::from_secs(5))
            .await
            .unwrap()
        else {
            continue;
        };
        let text = std::str::from_utf8(delivery.message().payload()).unwrap();
        let index: usize = text.parse().unwrap();
        assert!(index < MESSAGES, "unexpected payload {text:?}");
        assert!(
            delivery.message().headers().get(SOURCE_HEADER).is_some(),
            "the stage ran on every output"
        );
        *seen.entry(index).or_default() += 1;
        delivery.ack().await.unwrap();
    }
    // Outputs can be confirmed before their inputs' acks reach RabbitMQ: wait for the acks.
    while handle.metrics().snapshot().acked < MESSAGES as u64 {
        assert!(
            started.elapsed() < DEADLINE,
            "inputs not acked in time: {:?}",
            handle.metrics().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = handle.shutdown().await.unwrap();
    assert!(report.error.is_none(), "{report:?}");
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "bridged {MESSAGES} messages RabbitMQ -> pipeline -> Kafka in {:.1?}: {} distinct, {duplicates} duplicates; pipeline counters: received {}, out {}, acked {}, abandoned {}",
        started.elapsed(),
        seen.len(),
        report.metrics.received,
        report.metrics.out,
        report.metrics.acked,
        report.metrics.abandoned
    );
    assert_eq!(seen.len(), MESSAGES, "every input reached Kafka");

    // Nothing is left behind in RabbitMQ: every input was acked after its output's confirm.
    let mut leftover = rabbit.consumer(&input, Default::default()).await.unwrap();
    let left = leftover
        .receive_timeout(Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "an input is still in RabbitMQ: {:?}",
        left.map(|d| d.message().clone())
    );
    leftover.close().await.unwrap();
    reader.close().await.unwrap();
    let _ = rabbit.topology().delete_queue(&input).await;
    let _ = kafka.topology().delete_queue(&output).await;
}
