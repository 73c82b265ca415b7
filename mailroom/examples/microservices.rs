//! Microservices through a topic exchange.
//!
//! An orders service publishes order events to the `orders` topic exchange. Three services each
//! consume through their own queue, bound with a different pattern:
//!
//! | service  | binding          | sees                                  |
//! |----------|------------------|---------------------------------------|
//! | billing  | `order.created`  | new orders only                       |
//! | shipping | `order.*`        | every order event (one word after)    |
//! | audit    | `#`              | everything, including `order.eu.vip`  |
//!
//! Billing fails on one order every time: the message is retried (nack + requeue) until the
//! queue's delivery limit, then lands in `billing-dead` with the reason. Run it with
//! `cargo run --example microservices` (memory://) or pass a broker URL.

use std::collections::BTreeMap;
use std::time::Duration;

use mailroom::{
    Backend, Binding, Destination, ExchangeKind, ExchangeSpec, Nack, QueueSpec, Result,
};
use serde::{Deserialize, Serialize};

/// The event every service receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderEvent {
    /// The order.
    pub order: u32,
    /// What happened to it.
    pub kind: String,
}

/// What each service saw, by service name, as "routing-key#order" strings.
pub type Seen = BTreeMap<&'static str, Vec<String>>;

/// The order billing cannot process.
pub const POISON_ORDER: u32 = 3;

/// Declare the topology, publish the events, run the three services until they are idle, and
/// return what each saw (plus what billing dead-lettered).
pub async fn run(url: &str) -> Result<Seen> {
    let broker = mailroom::connect(url).await?;
    // Names are suffixed so that runs against a shared broker do not see each other, and made
    // of letters, digits and '-' only: SQS queue names allow no '.'.
    let run_id = &mailroom::MessageId::generate().to_string()[..8];
    let exchange = format!("orders-{run_id}");
    let queue = |service: &str| format!("{service}-{run_id}");
    let topo = broker.topology();
    topo.declare_exchange(&ExchangeSpec::new(&exchange, ExchangeKind::Topic))
        .await?;
    topo.declare_queue(&QueueSpec::new(queue("billing-dead")))
        .await?;
    topo.declare_queue(
        &QueueSpec::new(queue("billing"))
            .dead_letter_queue(queue("billing-dead"))
            .max_delivery_attempts(3),
    )
    .await?;
    topo.declare_queue(&QueueSpec::new(queue("shipping")))
        .await?;
    topo.declare_queue(&QueueSpec::new(queue("audit"))).await?;
    topo.bind(&Binding::pattern(
        &exchange,
        queue("billing"),
        "order.created",
    )?)
    .await?;
    topo.bind(&Binding::pattern(&exchange, queue("shipping"), "order.*")?)
        .await?;
    topo.bind(&Binding::pattern(&exchange, queue("audit"), "#")?)
        .await?;

    // The orders service.
    let producer = broker.producer().await?;
    let events = [
        ("order.created", 1),
        ("order.created", 2),
        ("order.paid", 1),
        ("order.created", POISON_ORDER),
        ("order.eu.vip", 2),
    ];
    for (routing_key, order) in events {
        let event = OrderEvent {
            order,
            kind: routing_key.to_owned(),
        };
        let message = mailroom::json::builder(&event)?
            .key(format!("order-{order}"))
            .build()?;
        producer
            .send(&Destination::exchange(&exchange, routing_key), message)
            .await?;
    }
    producer.close().await?;

    let mut seen = Seen::new();
    for service in ["billing", "shipping", "audit", "billing-dead"] {
        let service: &'static str = service;
        let log = serve(broker.as_ref(), &queue(service), service).await?;
        seen.insert(service, log);
    }
    for service in ["billing", "billing-dead", "shipping", "audit"] {
        let _ = topo.delete_queue(&queue(service)).await;
    }
    let _ = topo.delete_exchange(&exchange).await;
    broker.close().await?;
    Ok(seen)
}

/// One service: handle deliveries until the queue is idle; billing fails on the poison order.
async fn serve(broker: &dyn Backend, queue: &str, service: &'static str) -> Result<Vec<String>> {
    let mut consumer = broker.consumer(queue, Default::default()).await?;
    let mut log = Vec::new();
    while let Some(delivery) = consumer.receive_timeout(Duration::from_secs(1)).await? {
        let event: OrderEvent = delivery.json()?;
        let entry = format!("{}#{}", event.kind, event.order);
        if service == "billing" && event.order == POISON_ORDER {
            log.push(format!("{entry} failed (attempt {})", delivery.attempt()));
            delivery.nack(Nack::requeue()).await?;
            continue;
        }
        if service == "billing-dead" {
            let reason = delivery
                .message()
                .headers()
                .get(mailroom::delivery::DEAD_LETTER_REASON_HEADER)
                .unwrap_or("?")
                .to_owned();
            log.push(format!("{entry} dead-lettered: {reason}"));
        } else {
            log.push(entry);
        }
        delivery.ack().await?;
    }
    consumer.close().await?;
    Ok(log)
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    for (service, log) in run(&url).await? {
        println!("{service:>12}: {}", log.join(", "));
    }
    Ok(())
}
