//! Backends without the `transactions` capability (memory, RabbitMQ, SQS) answer
//! `Backend::transactional` with `Unsupported`, naming the capability, before any network call,
//! and the exactly-once pipeline refuses them the same way.
//!
//! "Before any network call" is shown by asking on a backend that is already closed: any I/O
//! would fail with `Closed` or a connection error, so `Unsupported` can only come from the
//! capability check. RabbitMQ and SQS need their features and the local brokers
//! (`scripts/brokers.sh up`; `MAILROOM_RABBITMQ_URL` / `MAILROOM_SQS_URL` override the addresses).

use std::sync::Arc;
use std::time::Duration;

use mailroom::processors::ExactlyOnce;
use mailroom::{Backend, Destination, ErrorKind, TransactionOptions};

const BOUND: Duration = Duration::from_secs(30);

/// Open `url`, close it, then check both refusals.
async fn refuses_transactions(url: &str, name: &str) {
    let phase = std::sync::Mutex::new("connecting");
    let check = async {
        let backend: Arc<dyn Backend> = mailroom::connect(url).await.unwrap();
        assert_eq!(backend.name(), name);
        assert!(!backend.capabilities().transactions);
        *phase.lock().unwrap() = "closing";
        backend.close().await.unwrap();

        *phase.lock().unwrap() = "Backend::transactional";
        let error = match backend
            .transactional("orders", TransactionOptions::new("unit-1"))
            .await
        {
            Ok(_) => panic!("{name} opened a transactional unit"),
            Err(e) => e,
        };
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{name}: {error}");
        assert!(!error.is_temporary());
        assert_eq!(error.backend(), Some(name));
        assert_eq!(error.operation(), Some("transactional"));
        assert!(error.message().contains("transactions"), "{error}");

        *phase.lock().unwrap() = "ExactlyOnce::build";
        let error = match ExactlyOnce::builder(
            backend.clone(),
            "orders",
            TransactionOptions::new("unit-1"),
        )
        .sink(backend.clone(), Destination::queue("out"))
        .build()
        .await
        {
            Ok(_) => panic!("{name} built an exactly-once pipeline"),
            Err(e) => e,
        };
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{name}: {error}");
        assert!(error.message().contains("transactions"), "{error}");
    };
    if tokio::time::timeout(BOUND, check).await.is_err() {
        panic!(
            "{name}: no answer within {BOUND:?}; it was at {}",
            phase.lock().unwrap()
        );
    }
}

#[tokio::test]
async fn memory_refuses_transactions_before_io() {
    refuses_transactions("memory://", "memory").await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_refuses_transactions_before_io() {
    let url = std::env::var("MAILROOM_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    refuses_transactions(&url, "rabbitmq").await;
}

#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_refuses_transactions_before_io() {
    let url = std::env::var("MAILROOM_SQS_URL")
        .unwrap_or_else(|_| "sqs://127.0.0.1:4566?region=us-east-1".into());
    refuses_transactions(&url, "sqs").await;
}
