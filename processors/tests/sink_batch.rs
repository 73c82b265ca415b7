//! A one-sink pipeline hands the producer whatever is ready in one `enqueue_batch`: order is
//! kept, nothing waits to fill a batch, and a producer that answers for fewer messages than it
//! was given stops the pipeline with no input of that batch acked: all are redelivered. The
//! same holds for a batch stage's `send_batch` (`to_batched`). A producer that takes messages
//! at once (`try_enqueue`) gets them one by one, and a message it hands back starts a batch.

use std::sync::atomic::{AtomicBool, Ordering as A};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{
    Backend, Destination, Message, PendingConfirm, Producer, QueueSpec, Receipt, Result, TryEnqueue,
};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Batch, Pipeline, Sink};

/// Passes everything to the memory producer, noting the size of every batch; when `drop_once`
/// is set, its first batch (by `enqueue_batch` or `send_batch`) loses a message from its
/// middle, and that message's result, so results after it no longer line up with their inputs.
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

    async fn send_batch(
        &self,
        destination: &Destination,
        mut messages: Vec<Message>,
    ) -> Result<Vec<Result<Receipt>>> {
        self.batches.lock().unwrap().push(messages.len());
        if self.drop_once.swap(false, A::SeqCst) {
            *self.dropped_from.lock().unwrap() = Some(messages.len());
            messages.remove(messages.len() / 2);
        }
        self.inner.send_batch(destination, messages).await
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

const N: usize = 500;

/// A broker whose queue "in" holds `N` numbered messages, and an empty queue "out".
async fn seeded() -> MemoryBackend {
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
    broker
}

/// How the pipeline hands messages to its sink.
#[derive(Clone, Copy)]
enum Shape {
    /// `to`: the sink gathers whatever is ready into one `enqueue_batch`.
    PerMessage,
    /// A batch stage, then `to_batched`: one `send_batch` per batch.
    Batched,
}

impl Shape {
    /// The name of the stage that sends.
    fn sink_stage(self) -> &'static str {
        match self {
            Shape::PerMessage => "sink",
            Shape::Batched => "batch-sink",
        }
    }
}

/// Run in -> tag -> out until every input is acked or the pipeline stops by itself.
async fn run(
    broker: &MemoryBackend,
    drop_once: bool,
    shape: Shape,
) -> (Arc<Recording>, mailroom_processors::Report) {
    let sink = Arc::new(Recording {
        inner: Arc::from(broker.producer().await.unwrap()),
        batches: Mutex::new(Vec::new()),
        drop_once: AtomicBool::new(drop_once),
        dropped_from: Mutex::new(None),
    });
    let tagged = Pipeline::builder()
        .source(broker.consumer("in", Default::default()).await.unwrap())
        .flow()
        .map("tag", |m: Message| {
            Message::new(format!("out-{}", String::from_utf8_lossy(m.payload())))
        });
    let to = Sink::new(sink.clone(), Destination::queue("out"));
    let pipeline = match shape {
        Shape::PerMessage => tagged.to(to),
        Shape::Batched => tagged
            .batch("batch", Batch::count(16).wait(Duration::from_millis(20)))
            .to_batched(to),
    }
    .unwrap();
    let handle = pipeline.spawn();
    for _ in 0..1000 {
        if handle.metrics().snapshot().acked >= N as u64 || handle.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = handle.shutdown().await.unwrap();
    (sink, report)
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
    let broker = seeded().await;
    let (sink, report) = run(&broker, false, Shape::PerMessage).await;
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
async fn a_producer_that_answers_short_stops_the_pipeline_and_its_batch_is_redelivered() {
    answering_short_redelivers_the_batch(Shape::PerMessage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_batch_that_answers_short_stops_the_pipeline_and_its_batch_is_redelivered() {
    answering_short_redelivers_the_batch(Shape::Batched).await;
}

async fn answering_short_redelivers_the_batch(shape: Shape) {
    let broker = seeded().await;
    let (sink, report) = run(&broker, true, shape).await;
    let error = report.error.as_ref().expect("the pipeline must stop");
    assert!(
        error.to_string().contains("answered for"),
        "the error names the miscount: {error}"
    );
    let batch = sink
        .dropped_from
        .lock()
        .unwrap()
        .expect("a batch of several");
    assert!(batch > 1);
    let sink_stage = report
        .metrics
        .stages
        .iter()
        .find(|s| s.name == shape.sink_stage());
    assert_eq!(
        sink_stage.map(|s| s.errors),
        Some(batch as u64),
        "{report:?}"
    );
    // Nothing of that batch was acked: a second run finds every input not yet acked and
    // sends it, so every output is there at least once.
    assert!(report.metrics.acked < N as u64, "{report:?}");
    let (_, second) = run(&broker, false, shape).await;
    assert!(second.error.is_none(), "{second:?}");
    assert_eq!(report.metrics.acked + second.metrics.acked, N as u64);
    let mut got = outputs(&broker).await;
    got.sort();
    got.dedup();
    let mut expected: Vec<String> = (0..N).map(|i| format!("out-{i}")).collect();
    expected.sort();
    assert_eq!(got, expected, "every input's output");
}

/// Takes messages at once through the memory producer's `try_enqueue`, except that it hands
/// every `wait_every`-th message back (as a full window would), and refuses the message
/// numbered `refuse` once, handing it back inside a temporary error (as a failed send does).
struct TakesAtOnce {
    inner: Arc<dyn Producer>,
    wait_every: usize,
    refuse: Option<usize>,
    tries: std::sync::atomic::AtomicUsize,
    taken: std::sync::atomic::AtomicUsize,
    refused: AtomicBool,
    batches: Mutex<Vec<usize>>,
}

#[async_trait]
impl Producer for TakesAtOnce {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        self.batches.lock().unwrap().push(1);
        self.inner.enqueue(destination, message).await
    }

    fn try_enqueue(&self, destination: &Destination, message: Message) -> TryEnqueue {
        let n = self.tries.fetch_add(1, A::SeqCst) + 1;
        if n % self.wait_every == 0 {
            return TryEnqueue::Wait(message);
        }
        let numbered = |i: usize| message.payload().as_ref() == format!("out-{i}").as_bytes();
        if self.refuse.is_some_and(numbered) && !self.refused.swap(true, A::SeqCst) {
            let refused = mailroom_core::Error::new(mailroom_core::ErrorKind::Timeout, "refused")
                .set_temporary(true)
                .with_undelivered(message);
            return TryEnqueue::Done(Err(refused));
        }
        self.taken.fetch_add(1, A::SeqCst);
        self.inner.try_enqueue(destination, message)
    }

    async fn enqueue_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        pending: &mut Vec<Result<PendingConfirm>>,
    ) {
        self.batches.lock().unwrap().push(messages.len());
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

/// in -> tag -> out through `producer`, until every input is acked or the pipeline stops.
async fn run_to(
    broker: &MemoryBackend,
    producer: Arc<dyn Producer>,
) -> mailroom_processors::Report {
    let pipeline = Pipeline::builder()
        .source(broker.consumer("in", Default::default()).await.unwrap())
        .flow()
        .map("tag", |m: Message| {
            Message::new(format!("out-{}", String::from_utf8_lossy(m.payload())))
        })
        .to(Sink::new(producer, Destination::queue("out")))
        .unwrap();
    let handle = pipeline.spawn();
    for _ in 0..1000 {
        if handle.metrics().snapshot().acked >= N as u64 || handle.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_takes_messages_at_once_gets_them_one_by_one_and_batches_the_rest_in_order()
{
    let broker = seeded().await;
    let producer = Arc::new(TakesAtOnce {
        inner: Arc::from(broker.producer().await.unwrap()),
        wait_every: 7,
        refuse: None,
        tries: Default::default(),
        taken: Default::default(),
        refused: AtomicBool::new(false),
        batches: Mutex::new(Vec::new()),
    });
    let report = run_to(&broker, producer.clone()).await;
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.metrics.acked, N as u64);
    assert_eq!(report.metrics.out, N as u64);
    let expected: Vec<String> = (0..N).map(|i| format!("out-{i}")).collect();
    assert_eq!(outputs(&broker).await, expected, "in order, each once");
    let taken = producer.taken.load(A::SeqCst);
    let batches = producer.batches.lock().unwrap().clone();
    // Each message went one way: at once, or in a batch behind one handed back.
    assert_eq!(taken + batches.iter().sum::<usize>(), N, "{batches:?}");
    assert!(taken > N / 2, "most are taken at once: {taken}");
    assert!(!batches.is_empty(), "a message handed back goes in a batch");
    let sink = report.metrics.stages.iter().find(|s| s.name == "sink");
    assert_eq!(
        sink.map(|s| (s.input, s.output)),
        Some((N as u64, N as u64))
    );
    assert_eq!(broker.queue_depth("in").unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_at_once_is_retried_and_its_input_acked_once_sent() {
    let broker = seeded().await;
    let producer = Arc::new(TakesAtOnce {
        inner: Arc::from(broker.producer().await.unwrap()),
        wait_every: usize::MAX,
        refuse: Some(3),
        tries: Default::default(),
        taken: Default::default(),
        refused: AtomicBool::new(false),
        batches: Mutex::new(Vec::new()),
    });
    let report = run_to(&broker, producer.clone()).await;
    assert!(report.error.is_none(), "{report:?}");
    assert!(producer.refused.load(A::SeqCst));
    assert_eq!(report.metrics.acked, N as u64);
    assert_eq!(report.metrics.retried, 1);
    let mut got = outputs(&broker).await;
    assert_eq!(got.len(), N, "each output once");
    // The retried one lands after those sent while it waited (see the crate docs on
    // ordering); the others keep their order.
    let retried = got.iter().position(|m| m == "out-3").unwrap();
    assert!(retried > 3, "resent after the others: {retried}");
    got.remove(retried);
    let others: Vec<String> = (0..N)
        .filter(|&i| i != 3)
        .map(|i| format!("out-{i}"))
        .collect();
    assert_eq!(got, others);
}
