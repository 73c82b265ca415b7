//! The microservices example does what its table says, on memory:// (and on RabbitMQ and SQS
//! when their backends are compiled in).

#[allow(dead_code)]
#[path = "../examples/microservices.rs"]
mod microservices;

fn check(seen: &microservices::Seen) {
    let get = |s: &str| seen.get(s).cloned().unwrap_or_default();
    assert_eq!(
        get("billing")
            .iter()
            .filter(|e| !e.contains("failed"))
            .collect::<Vec<_>>(),
        ["order.created#1", "order.created#2"],
        "{seen:#?}"
    );
    assert_eq!(
        get("billing")
            .iter()
            .filter(|e| e.contains("failed"))
            .count(),
        3,
        "billing retried the poison order up to its delivery limit: {seen:#?}"
    );
    let dead = get("billing-dead");
    assert_eq!(dead.len(), 1, "{seen:#?}");
    assert!(
        dead[0].starts_with("order.created#3 dead-lettered"),
        "{seen:#?}"
    );
    let mut shipping = get("shipping");
    shipping.sort();
    assert_eq!(
        shipping,
        [
            "order.created#1",
            "order.created#2",
            "order.created#3",
            "order.paid#1"
        ],
        "order.* matches one word after 'order': {seen:#?}"
    );
    assert_eq!(get("audit").len(), 5, "# matches everything: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_sees_what_its_binding_promises_on_memory() {
    check(&microservices::run("memory://").await.unwrap());
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_sees_what_its_binding_promises_on_rabbitmq() {
    let url = std::env::var("MAILROOM_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    check(&microservices::run(&url).await.unwrap());
}

/// SQS routes through SNS: `order.created` is an exact key, `order.*` a prefix plus the key's
/// word count (an attribute every exchange publish carries), `#` every message.
#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_sees_what_its_binding_promises_on_sqs() {
    let url = std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| "sqs://127.0.0.1:4566".into());
    check(&microservices::run(&url).await.unwrap());
}
