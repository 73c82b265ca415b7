//! Bad input tried as a new user would: each gets a clear typed error, nothing panics, nothing
//! accepted is lost, and the connection keeps working afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, Binding, ConsumerOptions, Destination, ErrorKind, ExchangeKind, ExchangeSpec, Message,
    QueueSpec, Registry,
};
use mailroom_rabbitmq::{RabbitBackend, RabbitConfig, RabbitFactory};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The backend as applications open it: through the registry, inside the capability check.
async fn connect(url: &str) -> Arc<dyn Backend> {
    Registry::new()
        .with(RabbitFactory)
        .connect(url)
        .await
        .unwrap()
}

fn name(what: &str) -> String {
    format!(
        "mr-bad-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_auth() {
    let err = RabbitBackend::from_url("amqp://guest:not-the-password@127.0.0.1:5672/%2f")
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    assert!(!format!("{err:?}").contains("not-the-password"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_auth_naming_the_vhost() {
    let err = RabbitBackend::from_url("amqp://guest:guest@127.0.0.1:5672/no-such-vhost")
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains("no-such-vhost"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_connection_within_the_timeout() {
    let start = Instant::now();
    let err = RabbitBackend::from_url("amqp://guest:guest@127.0.0.1:1/?connect_timeout_ms=3000")
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_temporary());
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_are_config_errors() {
    for bad in [
        "amqp://guest:secret@127.0.0.1:notaport/",
        "amqp://guest:secret@127.0.0.1/?prefetch=-1",
        "amqp://guest:secret@127.0.0.1/?typo=1",
        "rabbit://127.0.0.1",
    ] {
        let err = RabbitBackend::from_url(bad).await.unwrap_err();
        println!("{err}");
        assert_eq!(err.kind(), ErrorKind::Config, "{bad}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    let err = RabbitConfig::from_url("amqp://127.0.0.1/?confirm_window=0").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_declaration_is_conflict_and_the_connection_keeps_working() {
    let backend = connect(URL).await;
    let topo = backend.topology();
    let q = name("conflict");
    topo.declare_queue(&QueueSpec::new(&q)).await.unwrap();
    // Same name, different arguments: PRECONDITION_FAILED on the broker.
    let err = topo
        .declare_queue(&QueueSpec::new(&q).message_ttl(Duration::from_secs(5)))
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let err = topo
        .declare_queue(&QueueSpec::new(&q).durable(false))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let ex = name("conflict-ex");
    topo.declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Fanout))
        .await
        .unwrap();
    let err = topo
        .declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Topic))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

    // The same declaration again is fine, and messages still flow on the same backend.
    topo.declare_queue(&QueueSpec::new(&q)).await.unwrap();
    let producer = backend.producer().await.unwrap();
    let m = Message::new("still works");
    producer
        .send(&Destination::queue(&q), m.clone())
        .await
        .unwrap();
    let mut c = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .unwrap();
    let d = c
        .receive_timeout(Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message(), &m);
    d.ack().await.unwrap();
    c.close().await.unwrap();
    topo.delete_queue(&q).await.unwrap();
    topo.delete_exchange(&ex).await.unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_specs_are_typed_before_io() {
    let backend = connect(URL).await;
    let topo = backend.topology();
    let err = topo
        .declare_queue(
            &QueueSpec::new(name("q"))
                .max_delivery_attempts(3)
                .extra("x-queue-type", "classic"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("quorum"), "{err}");
    let err = topo
        .declare_queue(
            &QueueSpec::new(name("q"))
                .max_delivery_attempts(3)
                .durable(false),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let err = topo
        .declare_queue(&QueueSpec::new("has space"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = topo
        .bind(&Binding::key(name("missing-ex"), name("missing-q"), "k"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = backend
        .consumer(&name("q"), ConsumerOptions::default().prefetch(0))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_unroutable_messages_are_typed_and_returned() {
    let backend = connect(&format!("{URL}?max_message_size=1024")).await;
    let topo = backend.topology();
    let producer = backend.producer().await.unwrap();
    let q = name("ok");
    topo.declare_queue(&QueueSpec::new(&q)).await.unwrap();

    let big = Message::new(vec![0u8; 2048]);
    let err = producer
        .send(&Destination::queue(&q), big.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert_eq!(err.undelivered().map(Message::id), Some(big.id()));

    // Mandatory is on by default: a queue that does not exist is NotFound, not a silent drop.
    let lost = Message::new("to nowhere");
    let err = producer
        .send(&Destination::queue(name("never-declared")), lost.clone())
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.undelivered().map(Message::id), Some(lost.id()));

    // An exchange with no matching binding: Unroutable.
    let ex = name("ex");
    topo.declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Direct))
        .await
        .unwrap();
    topo.bind(&Binding::key(&ex, &q, "known")).await.unwrap();
    let err = producer
        .send(&Destination::exchange(&ex, "unknown"), lost.clone())
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::Unroutable, "{err}");
    assert_eq!(err.undelivered().map(Message::id), Some(lost.id()));

    // An exchange that does not exist: NotFound, and the producer is not harmed by it.
    let err = producer
        .send(&Destination::exchange(name("no-ex"), "k"), lost.clone())
        .await
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.undelivered().map(Message::id), Some(lost.id()));

    // Everything that was accepted arrives.
    let good = Message::new("routed");
    producer
        .send(&Destination::exchange(&ex, "known"), good.clone())
        .await
        .unwrap();
    let mut c = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .unwrap();
    let d = c
        .receive_timeout(Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message(), &good);
    d.ack().await.unwrap();
    assert!(c
        .receive_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    c.close().await.unwrap();
    producer.close().await.unwrap();
    topo.delete_queue(&q).await.unwrap();
    topo.delete_exchange(&ex).await.unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_after_close_is_closed() {
    let backend = connect(URL).await;
    let producer = backend.producer().await.unwrap();
    backend.close().await.unwrap();
    let m = Message::new("late");
    let err = producer
        .send(&Destination::queue("q"), m.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(err.undelivered().map(Message::id), Some(m.id()));
    let err = backend
        .consumer("q", ConsumerOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// What `unconfirmed` gives up, shown on the real broker: a message to a queue that does not
/// exist is `NotFound` under `confirmed`, but an unconfirmed send of it succeeds (the broker is
/// not asked) and nothing arrives anywhere; the producer keeps working, and what it sends to a
/// real queue arrives. A level RabbitMQ lacks is refused when the producer is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_sends_are_at_most_once_and_missing_levels_are_refused() {
    use mailroom_core::{DeliveryGuarantee, ProducerOptions};

    let backend = connect(URL).await;
    let options = ProducerOptions::default().guarantee(DeliveryGuarantee::LeaderConfirmed);
    let err = backend.producer_with(options).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("'leader_confirmed'"), "{err}");
    // The same level in the URL is refused before any connection is made.
    let err = Registry::new()
        .with(RabbitFactory)
        .connect(&format!("{URL}?guarantee=leader_confirmed"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");

    let producer = backend
        .producer_with(ProducerOptions::default().guarantee(DeliveryGuarantee::Unconfirmed))
        .await
        .unwrap();
    let receipt = producer
        .send(
            &Destination::queue(name("never-declared")),
            Message::new("to nowhere"),
        )
        .await
        .expect("an unconfirmed send does not learn that no queue took it");
    assert_eq!(receipt.offset, None);

    let q = name("unconfirmed");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let sent = Message::new("arrives");
    producer
        .send(&Destination::queue(&q), sent.clone())
        .await
        .unwrap();
    let mut consumer = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .unwrap();
    let delivery = consumer
        .receive_timeout(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the unconfirmed message to a real queue arrives");
    assert_eq!(delivery.message().id(), sent.id());
    delivery.ack().await.unwrap();
    consumer.close().await.unwrap();
    producer.close().await.unwrap();
    backend.topology().delete_queue(&q).await.unwrap();
}

/// A listener that answers every connection as an HTTP server would (RabbitMQ's management
/// port, an SQS emulator, a proxy), then closes it.
fn http_listener() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\nconnection: close\r\n\r\nbad request",
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_does_not_speak_amqp_is_named_as_such() {
    let addr = http_listener();
    let start = Instant::now();
    let err = RabbitBackend::from_url(&format!(
        "amqp://guest:hunter2@{addr}/%2f?connect_timeout_ms=10000"
    ))
    .await
    .unwrap_err();
    let took = start.elapsed();
    println!("{err} ({took:?})");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(!err.is_temporary(), "a wrong port does not heal: {err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("not as an AMQP 0-9-1 broker"), "{text}");
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(!text.contains("Nom") && !text.contains("hunter2"), "{text}");
    // It answers at once: no waiting out the 10 s connect timeout.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
