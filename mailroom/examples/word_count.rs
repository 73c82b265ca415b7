//! Word count over tumbling windows: lines in, `(word, window, count)` out.
//!
//! `cargo run --example word_count` runs on the embedded broker; pass a URL for another one,
//! e.g. `cargo run --features rabbitmq --example word_count -- amqp://guest:guest@127.0.0.1:5672/%2f`.
//! Each line's message timestamp is its event time; a window's input lines are acked only once
//! the window's counts are confirmed by the output queue.

use std::sync::Arc;
use std::time::Duration;

use mailroom::processors::{Pipeline, Sink, WindowSpec};
use mailroom::{Destination, Message, QueueSpec, Timestamp};

#[tokio::main]
async fn main() -> mailroom::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let broker = mailroom::connect(&url).await?;
    let run = &mailroom::MessageId::generate().to_string()[..8];
    let (input, output) = (format!("wc-lines-{run}"), format!("wc-counts-{run}"));
    for q in [&input, &output] {
        broker.topology().declare_queue(&QueueSpec::new(q)).await?;
    }

    let producer: Arc<dyn mailroom::Producer> = Arc::from(broker.producer().await?);
    let lines = [
        (1_000, "the quick brown fox"),
        (4_000, "jumps over the lazy dog"),
        (12_000, "the dog sleeps"),
        (14_000, "the fox runs"),
    ];
    for (at, line) in lines {
        let message = Message::builder(line)
            .timestamp(Timestamp::from_millis(at))
            .build()?;
        producer.send(&Destination::queue(&input), message).await?;
    }

    let pipeline = Pipeline::builder()
        .source(broker.consumer(&input, Default::default()).await?)
        .flow()
        .flat_map("words", |m: Message| {
            String::from_utf8_lossy(m.payload())
                .split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .key_by("by-word", |w: &String| w.clone())
        .window(
            "per-10s",
            WindowSpec::tumbling(Duration::from_secs(10)).max_out_of_order(Duration::from_secs(5)),
        )
        .count()
        .map("render", |w| {
            Message::new(format!(
                "[{:>6} ms, {:>6} ms) {:<6} {}",
                w.window.start.as_millis(),
                w.window.end.as_millis(),
                w.key.unwrap_or_default(),
                w.value
            ))
        })
        .to(Sink::new(producer.clone(), Destination::queue(&output)))?;
    let handle = pipeline.spawn();
    while handle.metrics().snapshot().received < lines.len() as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Shutdown drains and flushes the windows still open.
    let report = handle.shutdown().await?.into_result()?;

    let mut consumer = broker.consumer(&output, Default::default()).await?;
    let mut counts = Vec::new();
    while let Some(d) = consumer.receive_timeout(Duration::from_millis(500)).await? {
        counts.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await?;
    }
    counts.sort();
    for c in &counts {
        println!("{c}");
    }
    println!(
        "{} lines, {} window results, {} inputs acked",
        report.metrics.received, report.metrics.out, report.metrics.acked
    );
    consumer.close().await?;
    for q in [&input, &output] {
        broker.topology().delete_queue(q).await?;
    }
    broker.close().await
}
