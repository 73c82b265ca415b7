//! The smallest complete program: declare a queue, send with confirms, receive, ack.
//!
//! `cargo run --example quickstart` runs on the embedded broker; pass a URL for another one,
//! e.g. `cargo run --features rabbitmq --example quickstart -- amqp://guest:guest@127.0.0.1:5672/%2f`.

use mailroom::{Destination, Message, QueueSpec};

#[tokio::main]
async fn main() -> mailroom::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let broker = mailroom::connect(&url).await?;
    let queue = format!(
        "quickstart-{}",
        &mailroom::MessageId::generate().to_string()[..8]
    );
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await?;

    let producer = broker.producer().await?;
    for i in 0..3 {
        let message = Message::builder(format!("hello {i}"))
            .header("example", "quickstart")
            .key("greetings")
            .build()?;
        let receipt = producer.send(&Destination::queue(&queue), message).await?;
        println!("confirmed {}", receipt.id);
    }
    producer.close().await?;

    let mut consumer = broker.consumer(&queue, Default::default()).await?;
    for _ in 0..3 {
        let delivery = consumer.receive().await?;
        println!(
            "received {} (attempt {}): {}",
            delivery.message().id(),
            delivery.attempt(),
            String::from_utf8_lossy(delivery.message().payload())
        );
        delivery.ack().await?;
    }
    consumer.close().await?;
    broker.topology().delete_queue(&queue).await?;
    broker.close().await
}
