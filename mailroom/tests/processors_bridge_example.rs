//! The bridge example on memory:// → memory://: every input reaches the sink once, with its id,
//! key and a header naming its source; the empty one is dropped; the source is left empty.

#[allow(dead_code)]
#[path = "../examples/bridge.rs"]
mod bridge;

use std::time::Duration;

use mailroom::memory::MemoryBackend;
use mailroom::{Backend, Destination, Message, QueueSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_forwards_every_input_once_and_drops_empty_ones() {
    let source = MemoryBackend::new();
    let sink = MemoryBackend::new();
    source
        .topology()
        .declare_queue(&QueueSpec::new("in"))
        .await
        .unwrap();
    sink.topology()
        .declare_queue(&QueueSpec::new("out"))
        .await
        .unwrap();
    let feeder = source.producer().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..500 {
        let m = Message::builder(format!("event {i}"))
            .key(format!("k{}", i % 7))
            .build()
            .unwrap();
        ids.push(m.id().to_string());
        feeder.send(&Destination::queue("in"), m).await.unwrap();
    }
    feeder
        .send(&Destination::queue("in"), Message::new(""))
        .await
        .unwrap();

    // Stop once the source queue is drained and settled.
    let watcher = source.clone();
    let shutdown = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let d = watcher.queue_depth("in").unwrap();
            if d.ready == 0 && d.unacked == 0 {
                break;
            }
        }
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        bridge::run(&source, "in", &sink, "out", shutdown),
    )
    .await
    .expect("the bridge drains within the timeout")
    .unwrap();
    assert_eq!(report.metrics.received, 501);
    assert_eq!(report.metrics.filtered, 1);
    assert_eq!(report.metrics.out, 500);
    assert_eq!(report.metrics.acked, 501);
    assert_eq!(sink.queue_depth("out").unwrap().ready, 500);

    let mut out = sink.consumer("out", Default::default()).await.unwrap();
    let mut seen = Vec::new();
    while let Some(d) = out
        .receive_timeout(Duration::from_millis(200))
        .await
        .unwrap()
    {
        let m = d.message();
        assert_eq!(m.headers().get(bridge::BRIDGED_FROM_HEADER), Some("in"));
        let text = String::from_utf8_lossy(m.payload()).into_owned();
        let i: usize = text.trim_start_matches("event ").parse().unwrap();
        assert_eq!(m.key(), Some(format!("k{}", i % 7).as_str()), "key kept");
        seen.push(m.id().to_string());
        d.ack().await.unwrap();
    }
    assert_eq!(seen, ids, "every input once, in order, with its id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_distinct_counts_duplicates_by_id() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("q"))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    let m = Message::new("same");
    for _ in 0..3 {
        producer
            .send(&Destination::queue("q"), m.clone())
            .await
            .unwrap();
    }
    producer
        .send(&Destination::queue("q"), Message::new("other"))
        .await
        .unwrap();
    let (seen, deliveries) = bridge::read_distinct(&broker, "q", 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(deliveries, 4);
}
