//! Bad input tried as a new user would: each gets a clear, typed error, before any I/O where it
//! can be, and a failed send returns its message. Also the limits the backend enforces itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, ConsumerOptions, Destination, ErrorKind, Message, Nack, QueueSpec, Registry,
};
use mailroom_sqs::{SqsBackend, SqsFactory, DEFAULT_URL};

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn fresh(what: &str) -> String {
    format!(
        "mr-bad-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The backend as applications open it: through the registry, inside the capability check.
async fn backend() -> Arc<dyn Backend> {
    Registry::new()
        .with(SqsFactory)
        .connect(&url())
        .await
        .unwrap()
}

#[tokio::test]
async fn unknown_queue_is_not_found_and_returns_the_message() {
    let b = backend().await;
    let q = fresh("missing");
    let producer = b.producer().await.unwrap();
    let m = Message::new("to nowhere");
    let err = producer
        .send(&Destination::queue(&q), m.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&q), "{err}");
    assert_eq!(err.undelivered().map(Message::id), Some(m.id()));
    let err = b
        .consumer(&q, ConsumerOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = b.topology().delete_queue(&q).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn fifo_send_without_key_is_invalid_input_and_keys_group_ids_dedupe() {
    let b = backend().await;
    let q = format!("{}.fifo", fresh("fifo"));
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let producer = b.producer().await.unwrap();
    let dest = Destination::queue(&q);
    let err = producer
        .send(&dest, Message::new("no key"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("MessageGroupId"), "{err}");
    assert!(err.undelivered().is_some());

    let delayed = Message::builder("x")
        .key("k")
        .delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = producer.send(&dest, delayed).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    // The id is the deduplication id: the same message sent twice arrives once, in key order.
    let first = Message::builder("one").key("group-a").build().unwrap();
    let second = Message::builder("two").key("group-a").build().unwrap();
    producer.send(&dest, first.clone()).await.unwrap();
    producer.send(&dest, first.clone()).await.unwrap();
    producer.send(&dest, second.clone()).await.unwrap();
    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    for expected in [&first, &second] {
        let d = c
            .receive_timeout(Duration::from_secs(15))
            .await
            .unwrap()
            .expect("a FIFO message");
        assert_eq!(d.message(), expected);
        d.ack().await.unwrap();
    }
    let extra = c.receive_timeout(Duration::from_secs(2)).await.unwrap();
    assert!(extra.is_none(), "duplicate delivered: {extra:?}");
    c.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}

#[tokio::test]
async fn two_mib_payload_is_too_large_before_io() {
    let b = backend().await;
    let producer = b.producer().await.unwrap();
    let big = Message::new(vec![b'x'; 2 * 1024 * 1024]);
    // The queue does not exist: only a check before I/O answers PayloadTooLarge.
    let err = producer
        .send(&Destination::queue(fresh("never")), big.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert_eq!(err.undelivered().map(Message::id), Some(big.id()));
    // Binary payloads are base64-encoded: 900 KB of binary exceeds 1 MiB on the wire.
    let binary = Message::new(vec![0xffu8; 900 * 1024]);
    let err = producer
        .send(&Destination::queue(fresh("never")), binary)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(err.to_string().contains("base64"), "{err}");
}

#[tokio::test]
async fn delay_of_one_hour_is_invalid_input() {
    let b = backend().await;
    let producer = b.producer().await.unwrap();
    let m = Message::builder("later")
        .delay(Duration::from_secs(3600))
        .build()
        .unwrap();
    let err = producer
        .send(&Destination::queue(fresh("never")), m)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("900s"), "{err}");
}

#[tokio::test]
async fn requeue_beyond_twelve_hours_is_invalid_and_the_message_comes_back() {
    let b = backend().await;
    let q = fresh("requeue");
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let producer = b.producer().await.unwrap();
    let m = Message::new("again");
    producer
        .send(&Destination::queue(&q), m.clone())
        .await
        .unwrap();
    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let d = c
        .receive_timeout(Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    let err = d
        .nack(Nack::requeue_after(Duration::from_secs(13 * 3600)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let again = c
        .receive_timeout(Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.message().id(), m.id());
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
    c.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}

#[tokio::test]
async fn unreachable_endpoint_fails_with_connection_error_in_bounded_time() {
    let start = Instant::now();
    let err = SqsBackend::from_url("sqs://127.0.0.1:9?region=us-east-1&connect_timeout_ms=500")
        .await
        .unwrap_err();
    let waited = start.elapsed();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_temporary());
    assert!(err.to_string().contains("could not be reached"), "{err}");
    assert!(waited < Duration::from_secs(60), "took {waited:?}");
}

#[tokio::test]
async fn bad_urls_and_names_are_typed_errors() {
    for bad in [
        "sqs://127.0.0.1:4566?region=",
        "sqs://127.0.0.1:4566?max_message_size=10",
        "sqs://127.0.0.1:4566?nope=1",
        "sqs://127.0.0.1:99999",
    ] {
        let err = SqsBackend::from_url(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{bad}: {err}");
    }
    let b = backend().await;
    let err = b
        .topology()
        .declare_queue(&QueueSpec::new("has.dots"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = b
        .topology()
        .declare_queue(&QueueSpec::new(fresh("q")).extra("NotAnAttribute", "1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = b
        .topology()
        .declare_queue(&QueueSpec::new(fresh("q")).dead_letter_queue(fresh("nodlq")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn redeclaring_with_other_attributes_is_a_conflict() {
    let b = backend().await;
    let q = fresh("conflict");
    let spec = QueueSpec::new(&q).extra("VisibilityTimeout", "40");
    b.topology().declare_queue(&spec).await.unwrap();
    b.topology().declare_queue(&spec).await.unwrap();
    let err = b
        .topology()
        .declare_queue(&QueueSpec::new(&q).extra("VisibilityTimeout", "50"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    b.topology().delete_queue(&q).await.unwrap();
}

#[tokio::test]
async fn large_messages_are_split_across_batch_calls_by_total_size() {
    let b = backend().await;
    let q = fresh("split");
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let producer = b.producer().await.unwrap();
    // Ten 300 KB messages: 3 MB in all, so at least three calls of at most 1 MiB each.
    let sent: Vec<Message> = (0..10)
        .map(|i| Message::new(format!("{i}").repeat(300 * 1024)))
        .collect();
    let results = producer
        .send_batch(&Destination::queue(&q), sent.clone())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let mut seen = 0;
    while seen < sent.len() {
        let d = c
            .receive_timeout(Duration::from_secs(15))
            .await
            .unwrap()
            .unwrap();
        assert!(sent.iter().any(|m| m == d.message()));
        d.ack().await.unwrap();
        seen += 1;
    }
    c.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}

/// Acks return once the delete is queued for the next batch call; `close` waits for those
/// calls, so after it the queue holds nothing, not even messages hidden by their visibility.
#[tokio::test]
async fn acks_made_one_by_one_are_deleted_by_the_time_close_returns() {
    let (b, q, url) = queue_of("acks").await;
    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    for _ in 0..N_SETTLE {
        let d = c.receive().await.unwrap();
        d.ack().await.unwrap();
    }
    c.close().await.unwrap();
    assert_queue_empty(&b, &url, "acked messages still in the queue after close").await;
    b.topology().delete_queue(&q).await.unwrap();
}

/// A pipeline drains its last deliveries after closing its source: those acks have no `close`
/// left to wait for them, so each one returns only once its delete is done.
#[tokio::test]
async fn acks_made_after_close_are_deleted_by_the_time_they_return() {
    let (b, q, url) = queue_of("late-acks").await;
    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let mut held = Vec::with_capacity(N_SETTLE);
    while held.len() < N_SETTLE {
        held.push(c.receive().await.unwrap());
    }
    c.close().await.unwrap();
    for d in held {
        d.ack().await.unwrap();
    }
    assert_queue_empty(&b, &url, "messages acked after close still in the queue").await;
    b.topology().delete_queue(&q).await.unwrap();
}

const N_SETTLE: usize = 200;

/// A fresh queue holding `N_SETTLE` messages, and its URL for reading its counts.
async fn queue_of(prefix: &str) -> (SqsBackend, String, String) {
    // The concrete type, for its SDK client: these tests read the queue's counts.
    let b = SqsBackend::from_url(&url()).await.unwrap();
    let q = fresh(prefix);
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let producer = b.producer().await.unwrap();
    let messages: Vec<_> = (0..N_SETTLE)
        .map(|i| Message::new(format!("m{i}")))
        .collect();
    for r in producer
        .send_batch(&Destination::queue(&q), messages)
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let url = b
        .client()
        .get_queue_url()
        .queue_name(&q)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    (b, q, url)
}

/// Neither visible nor in-flight messages are left (fauxqs's counts are exact).
async fn assert_queue_empty(b: &SqsBackend, url: &str, what: &str) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = b
        .client()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let count = |name: A| -> u64 {
        attrs
            .attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(count(A::ApproximateNumberOfMessages), 0, "{what}");
    assert_eq!(count(A::ApproximateNumberOfMessagesNotVisible), 0, "{what}");
}

#[tokio::test]
async fn a_mistyped_host_is_named_as_unresolvable_without_a_credentials_story() {
    let start = Instant::now();
    let err = SqsBackend::from_url("sqs://no-such-host.invalid:4566?region=us-east-1")
        .await
        .unwrap_err();
    let took = start.elapsed();
    let text = format!("{err}");
    println!("{text} ({took:?})");
    assert_eq!(err.kind(), ErrorKind::Connection, "{text}");
    assert!(text.contains("cannot resolve"), "{text}");
    assert!(text.contains("no-such-host.invalid"), "{text}");
    let lower = text.to_ascii_lowercase();
    for unrelated in ["metadata", "imds", "credential", "169.254"] {
        assert!(!lower.contains(unrelated), "{unrelated}: {text}");
    }
    assert!(text.len() < 400, "{} bytes: {text}", text.len());
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn the_credential_chain_does_not_ask_the_ec2_metadata_service_unless_told() {
    // A reachable endpoint, no static keys, and (in the test environment) no keys in the
    // environment or profile: the chain ends without calling IMDS (which off EC2 costs seconds
    // of retries and a long error about it).
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        println!("skipped: AWS_ACCESS_KEY_ID is set, so the chain finds keys");
        return;
    }
    let start = Instant::now();
    let result = SqsBackend::from_url(&format!("{}&credentials=chain", url())).await;
    let took = start.elapsed();
    let text = match &result {
        Ok(_) => String::new(),
        Err(e) => format!("{e}"),
    };
    println!("{text} ({took:?})");
    if let Err(e) = &result {
        assert_eq!(e.kind(), ErrorKind::Auth, "{text}");
        assert!(text.contains("no AWS credentials found"), "{text}");
        assert!(text.contains("credentials=chain_and_imds"), "{text}");
        assert!(text.len() < 600, "{} bytes: {text}", text.len());
    }
    // The metadata service is named only as the option that turns it on: it was not called.
    for imds in [
        "Ec2InstanceMetadata",
        "169.254",
        "IMDSv2",
        "ProviderAttempt",
    ] {
        assert!(!text.contains(imds), "{imds}: {text}");
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn a_port_that_never_answers_times_out_at_the_bound_the_error_names() {
    // Accepts the connection, never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        if let Ok((stream, _)) = listener.accept() {
            held.push(stream);
            std::thread::sleep(Duration::from_secs(60));
        }
    });
    let start = Instant::now();
    let err = SqsBackend::from_url(&format!(
        "sqs://{addr}?region=us-east-1&operation_timeout_ms=3000"
    ))
    .await
    .unwrap_err();
    let took = start.elapsed();
    println!("{err} ({took:?})");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("3s"), "{err}");
    assert!(err.to_string().contains("operation_timeout_ms"), "{err}");
    // The bound is the operation timeout, not it plus the receive wait (20 s) as before.
    assert!(took >= Duration::from_millis(2500), "took {took:?}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    drop(held);
}
