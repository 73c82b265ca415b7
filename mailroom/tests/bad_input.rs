//! Bad input tried as a new user would: each gets a clear, typed error, never a panic.

use std::time::Duration;

use mailroom::{Binding, Destination, ErrorKind, ExchangeKind, ExchangeSpec, Message, QueueSpec};

#[tokio::test]
async fn unknown_scheme_lists_the_compiled_in_schemes() {
    let err = mailroom::connect("nats://127.0.0.1:4222")
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    assert!(text.contains("unknown URL scheme 'nats'"), "{text}");
    assert!(text.contains("memory://"), "{text}");
}

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    for url in ["memory", "", "://x", "1bad://x", "mem ory://"] {
        let err = mailroom::connect(url).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
        assert!(err.to_string().contains("malformed URL"), "{url}: {err}");
    }
    let err = mailroom::connect("memory://?colour=blue")
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("unknown memory:// parameter"),
        "{err}"
    );
}

#[tokio::test]
async fn passwords_never_appear_in_url_errors() {
    let err = mailroom::connect("nats://user:hunter2@host")
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn empty_or_invalid_names_are_invalid_input() {
    let broker = mailroom::connect("memory://").await.unwrap();
    let topo = broker.topology();
    let err = topo.declare_queue(&QueueSpec::new("")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("queue name is empty"), "{err}");

    let err = topo
        .declare_queue(&QueueSpec::new("has space"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("contains ' '"), "{err}");

    let err = topo
        .declare_exchange(&ExchangeSpec::new("", ExchangeKind::Topic))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exchange name is empty"), "{err}");

    let err = Destination::parse("").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    let err = broker.consumer("", Default::default()).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn invalid_topic_pattern_names_the_bad_word() {
    let err = Binding::pattern("orders", "q", "order.created*").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("\"created*\""), "{err}");
}

#[tokio::test]
async fn oversize_payload_is_payload_too_large_and_returned() {
    let broker = mailroom::connect("memory://?max_message_size=1024")
        .await
        .unwrap();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let mut err = producer
        .send(&Destination::queue("q"), Message::new(vec![0u8; 2048]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(err.to_string().contains("accepts at most 1024"), "{err}");
    assert_eq!(err.take_undelivered().unwrap().payload().len(), 2048);
}

#[tokio::test]
async fn header_value_too_large_is_named() {
    let err = Message::builder("x")
        .header("trace", "t".repeat(100_000))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .contains("header 'trace' value is 100000 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn sending_nowhere_is_not_found_or_unroutable() {
    let broker = mailroom::connect("memory://").await.unwrap();
    let producer = broker.producer().await.unwrap();
    let err = producer
        .send(&Destination::queue("missing"), Message::new("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.undelivered().is_some());

    let topo = broker.topology();
    topo.declare_exchange(&ExchangeSpec::new("events", ExchangeKind::Direct))
        .await
        .unwrap();
    let err = producer
        .send(
            &Destination::exchange("events", "nobody.listens"),
            Message::new("x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unroutable);
    assert!(err.to_string().contains("mandatory"), "{err}");
}

#[tokio::test]
async fn conflicting_declarations_are_conflicts_and_the_broker_keeps_working() {
    let broker = mailroom::connect("memory://").await.unwrap();
    let topo = broker.topology();
    topo.declare_queue(&QueueSpec::new("q")).await.unwrap();
    topo.declare_queue(&QueueSpec::new("q")).await.unwrap();
    let err = topo
        .declare_queue(&QueueSpec::new("q").message_ttl(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    topo.declare_exchange(&ExchangeSpec::new("x", ExchangeKind::Topic))
        .await
        .unwrap();
    let err = topo
        .declare_exchange(&ExchangeSpec::new("x", ExchangeKind::Fanout))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = topo.bind(&Binding::fanout("x", "q")).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "fanout route on a topic exchange"
    );
    let producer = broker.producer().await.unwrap();
    producer
        .send(&Destination::queue("q"), Message::new("still fine"))
        .await
        .unwrap();
}
