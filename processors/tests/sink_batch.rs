//! A one-sink pipeline hands the producer whatever is ready in one `enqueue_batch`: order is
//! kept, nothing waits to fill a batch, and when a producer answers for fewer messages than it
//! was given, no input of that batch is acked: all of them are redelivered.

use std::sync::atomic::{AtomicBool, Ordering as A};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{Backend, Destination, Message, PendingConfirm, Producer, QueueSpec, Result};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Pipeline, Sink};

/// Passes everything to the memory producer, noting the size of every batch; when `drop_once`
/// is set, its first batch loses a message from its middle, and that message's result, so
/// results after it no longer line up with their inputs.
struct Recording {
    inner: Arc<dyn Producer>,
    batches: Mutex<Vec<usize>>,
    drop_once: AtomicBool,
    /// The size of the batch the message was dropped from.
    dropped_from: Mutex<Option<usize>>,
}

#[async_trait]
impl Producer for Recording {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        self.batches.lock().unwrap().push(1);
        self.inner.enqueue(destination, message).await
    }

    async fn enqueue_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        pending: &mut Vec<Result<PendingConfirm>>,
    ) {
        self.batches.lock().unwrap().push(messages.len());
        if self.drop_once.swap(false, A::SeqCst) {
            *self.dropped_from.lock().unwrap() = Some(messages.len());
            messages.remove(messages.len() / 2);
        }
        self.inner
            .enqueue_batch(destination, messages, pending)
            .await;
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

const N: usize = 500;

async fn run(drop_once: bool) -> (MemoryBackend, Arc<Recording>, mailroom_processors::Report) {
    let broker = MemoryBackend::new();
    for q in ["in", "out"] {
        broker
            .topology()
            .declare_queue(&QueueSpec::new(q))
            .await
            .unwrap();
    }
    let producer = broker.producer().await.unwrap();
    for i in 0..N {
        producer
            .send(&Destination::queue("in"), Message::new(i.to_string()))
            .await
            .unwrap();
    }
    let sink = Arc::new(Recording {
        inner: Arc::from(broker.producer().await.unwrap()),
        batches: Mutex::new(Vec::new()),
        drop_once: AtomicBool::new(drop_once),
        dropped_from: Mutex::new(None),
    });
    let pipeline = Pipeline::builder()
        .source(broker.consumer("in", Default::default()).await.unwrap())
        .flow()
        .map("tag", |m: Message| {
            Message::new(format!("out-{}", String::from_utf8_lossy(m.payload())))
        })
        .to(Sink::new(sink.clone(), Destination::queue("out")))
        .unwrap();
    let handle = pipeline.spawn();
    for _ in 0..1000 {
        if handle.metrics().snapshot().acked >= N as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = handle.shutdown().await.unwrap();
    (broker, sink, report)
}

async fn outputs(broker: &MemoryBackend) -> Vec<String> {
    let mut out = broker.consumer("out", Default::default()).await.unwrap();
    let mut got = Vec::new();
    while let Some(d) = out
        .receive_timeout(Duration::from_millis(100))
        .await
        .unwrap()
    {
        got.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.unwrap();
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_messages_go_to_the_producer_in_batches_in_their_order() {
    let (broker, sink, report) = run(false).await;
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.metrics.acked, N as u64);
    let expected: Vec<String> = (0..N).map(|i| format!("out-{i}")).collect();
    assert_eq!(outputs(&broker).await, expected);
    let batches = sink.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), N);
    // The whole input was waiting, so batches fill up to the sink's limit.
    let largest = batches.iter().copied().max().unwrap_or(0);
    assert!(largest > 1, "no batching: {batches:?}");
    assert!(largest <= 64, "a batch over the limit: {largest}");
    assert_eq!(broker.queue_depth("in").unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_producer_answered_short_is_redelivered_whole_not_acked() {
    let (broker, sink, report) = run(true).await;
    assert!(report.error.is_none(), "{report:?}");
    let batch = sink
        .dropped_from
        .lock()
        .unwrap()
        .expect("a batch of several");
    // Every input of that batch was released unsettled, redelivered, then sent and acked.
    assert_eq!(report.metrics.abandoned, batch as u64, "{report:?}");
    assert_eq!(report.metrics.acked, N as u64);
    let mut got = outputs(&broker).await;
    // The batch's outputs that did reach the queue come twice: at least once, never lost.
    assert_eq!(got.len(), N + batch - 1, "{got:?}");
    got.sort();
    got.dedup();
    let mut expected: Vec<String> = (0..N).map(|i| format!("out-{i}")).collect();
    expected.sort();
    assert_eq!(got, expected, "every input's output");
}
