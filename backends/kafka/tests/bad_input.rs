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

/// A loopback port nothing listens on: bound, then released.
fn refused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_fails_at_once_naming_it() {
    let port = refused_port();
    let start = Instant::now();
    // The default connect timeout (10 s), which a refused connection used to wait out.
    let err = KafkaBackend::from_url(&format!("kafka://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("{err} ({took:?})");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_temporary(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.to_string().contains("connection refused"), "{err}");
    // Generous for a loaded machine, well below the 10 s it took.
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_resolve_fails_naming_it() {
    let start = Instant::now();
    let err = KafkaBackend::from_url("kafka://no-such-host.invalid:9092?connect_timeout_ms=20000")
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("{err} ({took:?})");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(
        err.to_string().contains("no-such-host.invalid:9092"),
        "{err}"
    );
    assert!(err.to_string().contains("cannot resolve"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
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

/// Kafka's `acks` through the delivery guarantee, on the real broker: a contradiction with
/// idempotence or a bad `acks` is a `Config` error at connect; a property set in code that
/// contradicts the level asked for is a `Config` error when the producer is opened; and a
/// backend opened `?acks=0` sends with it (the receipt claims no offset) while requeues stay
/// confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_contradictions_are_config_errors_and_acks_0_receipts_claim_no_offset() {
    use mailroom_core::{DeliveryGuarantee, ProducerOptions};

    for params in ["acks=1&enable.idempotence=true", "acks=2", "guarantee=fast"] {
        let err = Registry::new()
            .with(KafkaFactory)
            .connect(&with_params(params))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Config, "{params}: {err}");
    }

    let config = KafkaConfig::from_url(&url())
        .unwrap()
        .property("enable.idempotence", "true");
    let backend = KafkaBackend::connect(config).await.unwrap();
    let err = backend
        .kafka_producer_with(DeliveryGuarantee::LeaderConfirmed)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.message().contains("idempotence needs acks=all"),
        "{err}"
    );
    backend
        .kafka_producer()
        .expect("confirmed is what idempotence needs");

    let backend = connect(&with_params("acks=0")).await;
    let q = fresh("acks0");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let producer = backend.producer().await.unwrap();
    let sent = Message::new("acks=0");
    let receipt = producer
        .send(&Destination::queue(&q), sent.clone())
        .await
        .unwrap();
    assert_eq!(receipt.offset, None, "the broker never gave an offset");
    assert!(receipt.partition.is_some());
    // The same backend still opens a confirmed producer on request, whose receipt has one.
    let confirmed = backend
        .producer_with(ProducerOptions::default().guarantee(DeliveryGuarantee::Confirmed))
        .await
        .unwrap();
    let receipt = confirmed
        .send(&Destination::queue(&q), Message::new("acks=all"))
        .await
        .unwrap();
    assert!(receipt.offset.is_some_and(|o| o >= 0), "{receipt:?}");
    let mut consumer = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let delivery = consumer
            .receive_timeout(Duration::from_secs(30))
            .await
            .unwrap()
            .expect("both messages arrive");
        ids.push(delivery.message().id().clone());
        delivery.ack().await.unwrap();
    }
    assert!(ids.contains(sent.id()), "{ids:?}");
    consumer.close().await.unwrap();
    producer.close().await.unwrap();
    confirmed.close().await.unwrap();
    backend.topology().delete_queue(&q).await.unwrap();
}

/// A delayed requeue on Kafka, which has no delayed delivery, through the registry as an
/// application opens it: `Unsupported` naming the missing capability, and the message comes
/// back (on its next attempt) instead of the delay being dropped without a word. The backend's
/// own settle handle refuses it, so the capability layer leaves Kafka's consumers unwrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_requeue_is_refused_and_the_message_comes_back() {
    let b = connect(&url()).await;
    let q = fresh("delayed-nack");
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let p = b.producer().await.unwrap();
    let sent = Message::new("retry me later");
    p.send(&Destination::queue(&q), sent.clone()).await.unwrap();
    let mut consumer = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let first = consumer
        .receive_timeout(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the message arrives");
    assert_eq!(first.message().id(), sent.id());
    let err = first
        .nack(mailroom_core::Nack::requeue_after(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("delay"), "{err}");
    let again = consumer
        .receive_timeout(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the refused message comes back");
    assert_eq!(again.message().id(), sent.id());
    assert_eq!(again.attempt(), 2, "{:?}", again.info());
    again.ack().await.unwrap();
    consumer.close().await.unwrap();
    p.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}
