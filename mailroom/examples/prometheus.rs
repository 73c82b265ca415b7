//! Messaging metrics on a Prometheus endpoint: the `MetricsLayer` records through the
//! `metrics` facade, and `metrics-exporter-prometheus` (the application's choice, not the
//! library's) serves them on `/metrics`.
//!
//! `cargo run --example prometheus` sends and consumes 100 messages on the embedded broker,
//! prints what `http://127.0.0.1:9464/metrics` serves, and exits; `-- --serve` keeps serving
//! until Ctrl-C, for a Prometheus to scrape. A URL argument picks another broker, e.g.
//! `cargo run --features rabbitmq --example prometheus -- amqp://guest:guest@127.0.0.1:5672/%2f`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mailroom::layer::{LayerStack, MetricsLayer};
use mailroom::{ConsumerOptions, Destination, Message, QueueSpec};
use metrics_exporter_prometheus::PrometheusBuilder;

const LISTEN: &str = "127.0.0.1:9464";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.iter().any(|a| a == "--serve");
    let url = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "memory://".into());

    // The recorder first: the layer describes its metrics to the recorder installed then.
    let listen: SocketAddr = LISTEN.parse()?;
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()?;

    let broker = LayerStack::new()
        .layer(MetricsLayer::new())
        .apply(mailroom::connect(&url).await?);
    let queue = format!(
        "prometheus-{}",
        &mailroom::MessageId::generate().to_string()[..8]
    );
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await?;
    let producer = broker.producer().await?;
    for i in 0..100 {
        producer
            .send(&Destination::queue(&queue), Message::new(format!("{i}")))
            .await?;
    }
    let mut consumer = broker.consumer(&queue, ConsumerOptions::default()).await?;
    let mut consumed = 0;
    while consumed < 100 {
        match consumer.receive_timeout(Duration::from_secs(10)).await? {
            Some(delivery) => {
                delivery.ack().await?;
                consumed += 1;
            }
            None => break,
        }
    }
    println!("sent 100, consumed {consumed}; GET http://{LISTEN}/metrics:\n");
    let body = tokio::task::spawn_blocking(|| scrape(LISTEN)).await??;
    for line in body
        .lines()
        .filter(|l| l.contains("messaging_client") && !l.starts_with('#'))
    {
        println!("{line}");
    }
    if serve {
        println!("\nserving http://{LISTEN}/metrics until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    consumer.close().await?;
    broker.close().await?;
    Ok(())
}

/// What a scraper sees: the body of `GET /metrics` (HTTP/1.0, so the server closes the stream).
fn scrape(address: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(response))
}
