//! Bad input as a new user would try it: each gives a clear, typed error and loses nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, ConsumerOptions, Destination, ErrorKind, Message, QueueSpec, Registry,
};
use mailroom_kafka::{KafkaBackend, KafkaConfig, KafkaFactory};

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

fn with_params(params: &str) -> String {
    let base = url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{params}")
}

/// The backend as applications open it: through the registry, inside the capability check.
async fn connect(url: &str) -> Arc<dyn Backend> {
    Registry::new()
        .with(KafkaFactory)
        .connect(url)
        .await
        .unwrap()
}

fn fresh(what: &str) -> String {
    format!(
        "mr-kafka-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_bounded_connection_error() {
    let start = Instant::now();
    let err = KafkaBackend::from_url("kafka://127.0.0.1:1?connect_timeout_ms=2000")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_temporary());
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    // A bound, not a speed check: it must not hang.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_librdkafka_properties_are_config_errors_naming_them() {
    let err = KafkaBackend::from_url(&with_params("no.such.property=1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("no.such.property"), "{err}");

    let err = KafkaBackend::from_url(&with_params("linger.ms=soon"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("linger.ms"), "{err}");

    // With a secret configured, the error names the bad property and never shows the secret.
    let err = KafkaBackend::from_url(&with_params(
        "sasl.password=hunter2&security.protocol=carrier_pigeon",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("security.protocol"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    for (bad, says) in [
        ("kafka://", "names no broker"),
        ("kafka://localhost", "no port"),
        ("kafka://h:9092?partitions=zero", "partitions"),
        ("kafka://h:9092?colour=blue", "colour"),
    ] {
        let err = KafkaBackend::from_url(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{bad}: {err}");
        assert!(err.to_string().contains(says), "{bad}: {err}");
    }
    let c = KafkaConfig::from_url("kafka://u:topsecret@h:9092?ssl.key.password=k3y").unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("topsecret") && !shown.contains("k3y"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_not_found_at_once_and_the_message_comes_back() {
    let b = connect(&url()).await;
    let p = b.producer().await.unwrap();
    let m = Message::new("nowhere to go");
    let start = Instant::now();
    let mut err = p
        .send(&Destination::queue(fresh("never-declared")), m.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(err.take_undelivered().unwrap(), m);

    let err = b
        .consumer(&fresh("never-declared"), ConsumerOptions::default())
        .await
        .err()
        .expect("consuming an undeclared queue must fail");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_refused_before_io_and_returned() {
    let b = connect(&with_params("message.max.bytes=10000")).await;
    let limit = b.capabilities().max_message_size.unwrap();
    assert!(limit < 10_000);
    let q = fresh("oversize");
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let p = b.producer().await.unwrap();
    let big = Message::new(vec![1u8; 20_000]);
    let mut err = p
        .send(&Destination::queue(&q), big.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert_eq!(err.take_undelivered().unwrap(), big);
    // Just under the limit still goes through.
    let fits = Message::new(vec![2u8; limit - 100]);
    p.send(&Destination::queue(&q), fits).await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_and_unsupported_options_are_typed() {
    let b = connect(&url()).await;
    let err = b
        .topology()
        .declare_queue(&QueueSpec::new("has spaces"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = b
        .topology()
        .declare_queue(&QueueSpec::new("a/b"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("Kafka topic name"), "{err}");
    let err = b
        .consumer(
            "x",
            ConsumerOptions::default().replay(mailroom_core::Replay::Offset(-5)),
        )
        .await
        .err()
        .expect("a negative replay offset must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let p = b.producer().await.unwrap();
    let delayed = Message::builder("later")
        .delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = p.send(&Destination::queue("x"), delayed).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}
