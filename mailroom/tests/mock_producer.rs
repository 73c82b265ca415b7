//! Application code written against the traits, unit-tested with a mock producer (mockall).

use mailroom::{Destination, MockProducer, Producer, Receipt, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    total_cents: u64,
}

/// The code under test: it stores an order (elided) and publishes an event about it.
struct OrderService<P: Producer + ?Sized> {
    events: Box<P>,
}

impl<P: Producer + ?Sized> OrderService<P> {
    async fn place_order(&self, order_id: u64, customer: &str, total_cents: u64) -> Result<()> {
        let event = OrderPlaced {
            order_id,
            customer: customer.to_owned(),
            total_cents,
        };
        let message = mailroom::json::builder(&event)?
            .key(customer)
            .id(format!("order-{order_id}"))
            .build()?;
        self.events
            .send(&Destination::exchange("orders", "order.placed"), message)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn placing_an_order_publishes_one_keyed_event() {
    let mut producer = MockProducer::new();
    producer
        .expect_send()
        .times(1)
        .withf(|dest, message| {
            let event: OrderPlaced = mailroom::json::decode(message).unwrap();
            *dest == Destination::exchange("orders", "order.placed")
                && message.key() == Some("alice")
                && message.id().to_string() == "order-42"
                && event.total_cents == 1999
        })
        .returning(|_, message| Ok(Receipt::new(message.id().clone())));
    let service = OrderService {
        events: Box::new(producer),
    };
    service.place_order(42, "alice", 1999).await.unwrap();
}

#[tokio::test]
async fn a_broker_failure_reaches_the_caller() {
    let mut producer = MockProducer::new();
    producer.expect_send().returning(|_, message| {
        Err(
            mailroom::Error::new(mailroom::ErrorKind::Connection, "broker down")
                .with_undelivered(message),
        )
    });
    let service = OrderService {
        events: Box::new(producer),
    };
    let err = service.place_order(1, "bob", 5).await.unwrap_err();
    assert_eq!(err.kind(), mailroom::ErrorKind::Connection);
    assert!(err.is_temporary());
}
