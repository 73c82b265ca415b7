//! Typed events with serde, as a template for application code.
//!
//! Application code depends on `&dyn Producer` (or a generic `P: Producer`), never on a broker:
//! the same `OrderService` runs on memory://, RabbitMQ, Kafka or SQS, and in unit tests against a
//! mockall `MockProducer` (see `tests/example_typed_events.rs`). On the consuming side a payload
//! that does not decode is dead-lettered with the decode error as the reason, raw bytes intact,
//! instead of being dropped or crashing the consumer.
//! `cargo run --example typed_events [URL]`.

use std::time::Duration;

use mailroom::{Destination, Nack, Producer, QueueSpec, Result};
use serde::{Deserialize, Serialize};

/// Everything that happens to an order, as one tagged JSON type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderEvent {
    /// A customer placed an order.
    Placed {
        /// The order.
        order_id: u64,
        /// Who placed it (the ordering key).
        customer: String,
        /// Total in cents.
        total_cents: u64,
    },
    /// The order was paid.
    Paid {
        /// The order.
        order_id: u64,
    },
}

/// Application code: publishes events, knows nothing of brokers.
pub struct OrderService<'a> {
    /// Where events go.
    pub events: &'a dyn Producer,
    /// The destination for order events.
    pub destination: Destination,
}

impl OrderService<'_> {
    /// Place an order: one `Placed` event, keyed by customer so a customer's events stay ordered,
    /// with a deterministic id so a retried request is recognisable downstream.
    pub async fn place(&self, order_id: u64, customer: &str, total_cents: u64) -> Result<()> {
        let event = OrderEvent::Placed {
            order_id,
            customer: customer.to_owned(),
            total_cents,
        };
        let message = mailroom::json::builder(&event)?
            .key(customer)
            .id(format!("order-{order_id}-placed"))
            .build()?;
        self.events.send(&self.destination, message).await?;
        Ok(())
    }

    /// Record a payment.
    pub async fn pay(&self, order_id: u64, customer: &str) -> Result<()> {
        let message = mailroom::json::builder(&OrderEvent::Paid { order_id })?
            .key(customer)
            .id(format!("order-{order_id}-paid"))
            .build()?;
        self.events.send(&self.destination, message).await?;
        Ok(())
    }
}

/// What the consuming side ended up with.
#[derive(Debug, Default)]
pub struct Consumed {
    /// Events decoded and handled.
    pub events: Vec<OrderEvent>,
    /// Raw payloads that did not decode, read back from the dead-letter queue.
    pub dead_lettered: Vec<Vec<u8>>,
}

/// Publish through the service (plus one malformed message), consume typed, dead-letter junk.
pub async fn run(url: &str) -> Result<Consumed> {
    let broker = mailroom::connect(url).await?;
    let suffix = &mailroom::MessageId::generate().to_string()[..8];
    let (queue, dead) = (format!("orders-{suffix}"), format!("orders-dead-{suffix}"));
    let topo = broker.topology();
    topo.declare_queue(&QueueSpec::new(&dead)).await?;
    topo.declare_queue(&QueueSpec::new(&queue).dead_letter_queue(&dead))
        .await?;

    let producer = broker.producer().await?;
    let service = OrderService {
        events: producer.as_ref(),
        destination: Destination::queue(&queue),
    };
    service.place(1, "ada", 4_200).await?;
    service.pay(1, "ada").await?;
    // A producer elsewhere with a bug sends something that is not an OrderEvent.
    producer
        .send(
            &Destination::queue(&queue),
            mailroom::Message::new(r#"{"type":"refunded","order":"#),
        )
        .await?;
    producer.close().await?;

    let mut consumed = Consumed::default();
    let mut consumer = broker.consumer(&queue, Default::default()).await?;
    while let Some(delivery) = consumer.receive_timeout(Duration::from_secs(1)).await? {
        match delivery.json::<OrderEvent>() {
            Ok(event) => {
                consumed.events.push(event);
                delivery.ack().await?;
            }
            Err(e) => delivery.nack(Nack::dead_letter(e.to_string())).await?,
        }
    }
    consumer.close().await?;
    let mut dead_consumer = broker.consumer(&dead, Default::default()).await?;
    while let Some(delivery) = dead_consumer
        .receive_timeout(Duration::from_secs(1))
        .await?
    {
        consumed
            .dead_lettered
            .push(delivery.message().payload().to_vec());
        delivery.ack().await?;
    }
    dead_consumer.close().await?;
    let _ = topo.delete_queue(&queue).await;
    let _ = topo.delete_queue(&dead).await;
    broker.close().await?;
    Ok(consumed)
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let consumed = run(&url).await?;
    for event in &consumed.events {
        println!("handled       {event:?}");
    }
    for raw in &consumed.dead_lettered {
        println!("dead-lettered {}", String::from_utf8_lossy(raw));
    }
    Ok(())
}
