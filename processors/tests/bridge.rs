//! The bridge on the in-memory broker: outputs confirmed before inputs are acked; a failing or
//! panicking transform dead-letters its input.

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::{Backend, Destination, Error, ErrorKind, Message, Producer, QueueSpec};
use mailroom_memory::MemoryBackend;
use mailroom_processors::Bridge;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_transforms_filters_and_dead_letters() {
    let broker = MemoryBackend::new();
    let topo = broker.topology();
    topo.declare_queue(&QueueSpec::new("dead")).await.unwrap();
    topo.declare_queue(&QueueSpec::new("in").dead_letter_queue("dead"))
        .await
        .unwrap();
    topo.declare_queue(&QueueSpec::new("out")).await.unwrap();
    let producer = broker.producer().await.unwrap();
    for i in 0..1000 {
        let text = match i % 10 {
            0 => format!("skip {i}"),
            1 => format!("bad {i}"),
            2 => format!("boom {i}"),
            _ => format!("item {i}"),
        };
        producer
            .send(&Destination::queue("in"), Message::new(text))
            .await
            .unwrap();
    }
    let source = broker.consumer("in", Default::default()).await.unwrap();
    let sink: Arc<dyn Producer> = Arc::from(broker.producer().await.unwrap());
    let watcher = broker.clone();
    let shutdown = async move {
        // Stop once the input queue is empty and nothing is unsettled.
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let d = watcher.queue_depth("in").unwrap();
            if d.ready == 0 && d.unacked == 0 {
                break;
            }
        }
    };
    let stats = Bridge::new(source, sink, Destination::queue("out"))
        .transform(|m| {
            let text = String::from_utf8_lossy(m.payload()).to_string();
            if text.starts_with("skip") {
                Ok(None)
            } else if text.starts_with("boom") {
                panic!("transform exploded on {text:?}");
            } else if text.starts_with("bad") {
                Err(Error::new(
                    ErrorKind::Decode,
                    format!("cannot parse {text:?}"),
                ))
            } else {
                Ok(Some(Message::new(text.to_uppercase())))
            }
        })
        .max_in_flight(32)
        .run(shutdown)
        .await
        .unwrap();
    assert_eq!(stats.received, 1000);
    assert_eq!(stats.filtered, 100);
    // A panic in the transform is an error like any other: dead-lettered.
    assert_eq!(stats.dead_lettered, 200);
    assert_eq!(stats.forwarded, 700);
    assert_eq!(broker.queue_depth("out").unwrap().ready, 700);
    assert_eq!(broker.queue_depth("dead").unwrap().ready, 200);
    let mut out = broker.consumer("out", Default::default()).await.unwrap();
    let first = out.receive().await.unwrap();
    assert!(first.message().payload().starts_with(b"ITEM"));
    first.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_output_requeues_its_input() {
    let broker = MemoryBackend::new();
    broker
        .topology()
        .declare_queue(&QueueSpec::new("in"))
        .await
        .unwrap();
    let producer = broker.producer().await.unwrap();
    producer
        .send(&Destination::queue("in"), Message::new("x"))
        .await
        .unwrap();
    let source = broker.consumer("in", Default::default()).await.unwrap();
    let sink: Arc<dyn Producer> = Arc::from(broker.producer().await.unwrap());
    // "missing" does not exist: every send fails, so the input must stay in "in".
    let stats = Bridge::new(source, sink, Destination::queue("missing"))
        .run(tokio::time::sleep(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(stats.received >= 1);
    assert_eq!(stats.forwarded, 0);
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready + depth.unacked, 1, "the input was not lost");
}
