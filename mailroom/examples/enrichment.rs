//! Enrichment with a dead-letter queue: decode orders, look up each customer (an async call
//! that sometimes times out and is retried with backoff), and dead-letter what cannot be
//! processed, with headers naming the stage, the error and the attempt.
//!
//! `cargo run --example enrichment` runs on the embedded broker; pass a URL for another one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailroom::processors::{stage, Backoff, ErrorPolicy, Pipeline, Sink};
use mailroom::{Destination, Error, ErrorKind, Message, QueueSpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u32,
    customer: String,
    cents: u64,
}

#[derive(Debug, Clone, Serialize)]
struct EnrichedOrder {
    id: u32,
    customer: String,
    tier: String,
    cents: u64,
}

/// A customer directory that times out on every third call and knows only some customers.
async fn lookup_tier(customer: &str, calls: &AtomicU32) -> Result<String, Error> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    if calls.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
        return Err(Error::new(ErrorKind::Timeout, "directory timed out"));
    }
    match customer {
        "acme" => Ok("gold".into()),
        "globex" => Ok("silver".into()),
        other => Err(Error::not_found(format!("no customer {other:?}"))),
    }
}

#[tokio::main]
async fn main() -> mailroom::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let broker = mailroom::connect(&url).await?;
    let run = &mailroom::MessageId::generate().to_string()[..8];
    let (input, output, dlq) = (
        format!("orders-{run}"),
        format!("orders-enriched-{run}"),
        format!("orders-dlq-{run}"),
    );
    for q in [&input, &output, &dlq] {
        broker.topology().declare_queue(&QueueSpec::new(q)).await?;
    }
    let producer: Arc<dyn mailroom::Producer> = Arc::from(broker.producer().await?);
    let mut sent = 0;
    for (id, customer) in [(1, "acme"), (2, "globex"), (3, "initech"), (4, "acme")] {
        let order = Order {
            id,
            customer: customer.into(),
            cents: 1_000 * u64::from(id),
        };
        let message = mailroom::json::builder(&order)?.key(customer).build()?;
        producer.send(&Destination::queue(&input), message).await?;
        sent += 1;
    }
    producer
        .send(&Destination::queue(&input), Message::new("{not an order"))
        .await?;
    sent += 1;

    let dead_letters = Sink::new(producer.clone(), Destination::queue(&dlq));
    let calls = Arc::new(AtomicU32::new(0));
    let pipeline = Pipeline::builder()
        .source(broker.consumer(&input, Default::default()).await?)
        .flow()
        .decode::<Order>(stage("decode").on_error(ErrorPolicy::dead_letter(dead_letters.clone())))
        .then(
            stage("enrich")
                .concurrency(8)
                .on_error(ErrorPolicy::retry_then(
                    Backoff::exponential(Duration::from_millis(20), 4),
                    ErrorPolicy::dead_letter(dead_letters),
                )),
            move |order: Order| {
                let calls = calls.clone();
                async move {
                    let tier = lookup_tier(&order.customer, &calls).await?;
                    Ok(EnrichedOrder {
                        id: order.id,
                        customer: order.customer,
                        tier,
                        cents: order.cents,
                    })
                }
            },
        )
        .encode("encode")
        .to(Sink::new(producer.clone(), Destination::queue(&output)))?;
    let handle = pipeline.spawn();
    loop {
        let s = handle.metrics().snapshot();
        if s.acked >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = handle.shutdown().await?.into_result()?;

    for (queue, title) in [(&output, "enriched"), (&dlq, "dead-lettered")] {
        let mut consumer = broker.consumer(queue, Default::default()).await?;
        println!("{title}:");
        while let Some(d) = consumer.receive_timeout(Duration::from_millis(200)).await? {
            let m = d.message();
            println!("  {}", String::from_utf8_lossy(m.payload()));
            for (name, value) in m.headers() {
                if name.starts_with("x-mailroom-dead-letter") {
                    println!("      {name}: {value}");
                }
            }
            d.ack().await?;
        }
        consumer.close().await?;
    }
    let m = &report.metrics;
    println!(
        "received {}, out {}, retried {}, dead-lettered {}, acked {}",
        m.received, m.out, m.retried, m.dead_lettered, m.acked
    );
    for q in [&input, &output, &dlq] {
        broker.topology().delete_queue(q).await?;
    }
    broker.close().await
}
