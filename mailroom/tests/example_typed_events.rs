//! The typed-events template: end to end on memory://, and its service unit-tested with a mock.

#[allow(dead_code)]
#[path = "../examples/typed_events.rs"]
mod typed_events;

use mailroom::{Destination, MockProducer, Receipt};
use typed_events::{OrderEvent, OrderService};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_decode_typed_and_junk_is_dead_lettered_raw() {
    let consumed = typed_events::run("memory://").await.unwrap();
    assert_eq!(
        consumed.events,
        [
            OrderEvent::Placed {
                order_id: 1,
                customer: "ada".into(),
                total_cents: 4_200
            },
            OrderEvent::Paid { order_id: 1 }
        ]
    );
    assert_eq!(
        consumed.dead_lettered,
        [br#"{"type":"refunded","order":"#.to_vec()]
    );
}

#[tokio::test]
async fn the_service_publishes_a_keyed_placed_event_unit_tested_with_a_mock() {
    let mut producer = MockProducer::new();
    producer
        .expect_send()
        .times(1)
        .withf(|dest, message| {
            let event: OrderEvent = mailroom::json::decode(message).unwrap();
            *dest == Destination::queue("orders")
                && message.key() == Some("ada")
                && message.id().to_string() == "order-7-placed"
                && event
                    == OrderEvent::Placed {
                        order_id: 7,
                        customer: "ada".into(),
                        total_cents: 99,
                    }
        })
        .returning(|_, message| Ok(Receipt::new(message.id().clone())));
    let service = OrderService {
        events: &producer,
        destination: Destination::queue("orders"),
    };
    service.place(7, "ada", 99).await.unwrap();
}
