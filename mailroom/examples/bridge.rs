//! A bridge between two brokers through a pipeline: RabbitMQ in, Kafka out (or any pair).
//!
//! `cargo run --example bridge` bridges memory:// → memory://. Give two URLs for real brokers:
//!
//! ```text
//! cargo run --features rabbitmq,kafka --example bridge -- \
//!     amqp://guest:guest@127.0.0.1:5672/%2f kafka://127.0.0.1:9092
//! ```
//!
//! The demo fills a fresh source queue, bridges it, and reads the sink until every message is
//! there. Each input is acked on the source only after its output is confirmed by the sink, so
//! stopping the bridge at any point (Ctrl-C, a crash) loses nothing: unconfirmed inputs are
//! redelivered, which can only make a duplicate. Outputs keep the input's id and key (the key
//! picks the Kafka partition, so per-key order survives the hop), so a reader can drop
//! duplicates by id.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mailroom::processors::{Pipeline, Report, Sink};
use mailroom::{Backend, ConsumerOptions, Destination, Message, Producer, QueueSpec};

/// Header naming the queue a bridged message came from.
pub const BRIDGED_FROM_HEADER: &str = "x-bridged-from";

/// Bridge `input` on `source` to `output` on `sink` until `shutdown` resolves, then drain
/// what is in flight and report. Empty messages are dropped (and acked); every other message
/// goes on unchanged but for a header naming where it came from.
pub async fn run(
    source: &dyn Backend,
    input: &str,
    sink: &dyn Backend,
    output: &str,
    shutdown: impl Future<Output = ()> + Send,
) -> mailroom::Result<Report> {
    let consumer = source
        .consumer(input, ConsumerOptions::default().prefetch(500))
        .await?;
    let producer: Arc<dyn Producer> = Arc::from(sink.producer().await?);
    let from = input.to_owned();
    let pipeline = Pipeline::builder()
        .max_in_flight(1000)
        .source(consumer)
        .flow()
        .filter("non-empty", |m: &Message| !m.payload().is_empty())
        .map("stamp", move |mut m: Message| {
            // The queue name was validated by the broker, so it is a valid header value.
            let _ = m.headers_mut().insert(BRIDGED_FROM_HEADER, from.as_str());
            m
        })
        .to(Sink::new(producer.clone(), Destination::queue(output)))?;
    let report = pipeline.run_until(shutdown).await;
    producer.close().await?;
    report.into_result()
}

/// Read `count` distinct messages (by id) from `queue`, acking each; returns how many
/// deliveries that took (more than `count` means duplicates).
pub async fn read_distinct(
    broker: &dyn Backend,
    queue: &str,
    count: usize,
    timeout: Duration,
) -> mailroom::Result<(HashSet<String>, usize)> {
    let mut consumer = broker.consumer(queue, Default::default()).await?;
    let mut seen = HashSet::new();
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.len() < count && tokio::time::Instant::now() < deadline {
        if let Some(d) = consumer.receive_timeout(Duration::from_secs(1)).await? {
            deliveries += 1;
            seen.insert(d.message().id().to_string());
            d.ack().await?;
        }
    }
    consumer.close().await?;
    Ok((seen, deliveries))
}

#[tokio::main]
async fn main() -> mailroom::Result<()> {
    let mut args = std::env::args().skip(1);
    let source_url = args.next().unwrap_or_else(|| "memory://".into());
    let sink_url = args.next().unwrap_or_else(|| "memory://".into());
    let source = mailroom::connect(&source_url).await?;
    let sink = mailroom::connect(&sink_url).await?;
    let run_id = &mailroom::MessageId::generate().to_string()[..8];
    let (input, output) = (
        format!("bridge-in-{run_id}"),
        format!("bridge-out-{run_id}"),
    );
    source
        .topology()
        .declare_queue(&QueueSpec::new(&input))
        .await?;
    sink.topology()
        .declare_queue(&QueueSpec::new(&output))
        .await?;

    const COUNT: usize = 1000;
    let feeder = source.producer().await?;
    for i in 0..COUNT {
        let message = Message::builder(format!("event {i}"))
            .key(format!("customer-{}", i % 16))
            .build()?;
        feeder.send(&Destination::queue(&input), message).await?;
    }
    // One empty message, which the bridge drops.
    feeder
        .send(&Destination::queue(&input), Message::new(""))
        .await?;
    feeder.close().await?;

    // The bridge runs until the reader has every message (or Ctrl-C).
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let reader_sink = sink.clone();
    let reader_output = output.clone();
    let reader = tokio::spawn(async move {
        let read = read_distinct(
            &*reader_sink,
            &reader_output,
            COUNT,
            Duration::from_secs(120),
        )
        .await;
        let _ = done_tx.send(());
        read
    });
    let shutdown = async move {
        tokio::select! {
            _ = done_rx => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let report = run(&*source, &input, &*sink, &output, shutdown).await?;
    let (seen, deliveries) = reader
        .await
        .map_err(|e| mailroom::Error::new(mailroom::ErrorKind::Closed, e.to_string()))??;
    println!(
        "{source_url} -> {sink_url}: {} received, {} filtered, {} forwarded, {} acked; \
         the sink holds {} distinct messages ({} deliveries read)",
        report.metrics.received,
        report.metrics.filtered,
        report.metrics.out,
        report.metrics.acked,
        seen.len(),
        deliveries
    );
    source.topology().delete_queue(&input).await?;
    sink.topology().delete_queue(&output).await?;
    source.close().await?;
    sink.close().await
}
