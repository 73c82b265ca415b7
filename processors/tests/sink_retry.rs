//! A sink keeps no copy of each output: a retry resends the message the producer handed back
//! inside its error, and a failure that does not hand it back is given up (never acked).

use std::sync::atomic::{AtomicUsize, Ordering as A};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{
    Backend, Destination, Error, ErrorKind, Message, PendingConfirm, Producer, QueueSpec, Result,
};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Pipeline, Sink};

/// Fails the first `failures` confirms, returning the message inside the error when `returns`.
struct Flaky {
    inner: Arc<dyn Producer>,
    failures: usize,
    returns: bool,
    calls: AtomicUsize,
}

#[async_trait]
impl Producer for Flaky {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        if self.calls.fetch_add(1, A::SeqCst) < self.failures {
            let error = Error::new(ErrorKind::Timeout, "confirm timed out");
            let error = if self.returns {
                error.with_undelivered(message)
            } else {
                error
            };
            // The confirm fails later, as a broker's negative confirm would.
            return Ok(PendingConfirm::waiting(async move { Err(error) }));
        }
        self.inner.enqueue(destination, message).await
    }
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

async fn setup() -> MemoryBackend {
    let broker = MemoryBackend::new();
    for q in ["in", "out"] {
        broker
            .topology()
            .declare_queue(&QueueSpec::new(q))
            .await
            .unwrap();
    }
    broker
        .producer()
        .await
        .unwrap()
        .send(&Destination::queue("in"), Message::new("payload"))
        .await
        .unwrap();
    broker
}

async fn run(broker: &MemoryBackend, sink: Flaky) -> mailroom_processors::Report {
    let pipeline = Pipeline::builder()
        .source(broker.consumer("in", Default::default()).await.unwrap())
        .flow()
        .map("upper", |m: Message| {
            Message::new(m.payload().to_ascii_uppercase())
        })
        .to(Sink::new(Arc::new(sink), Destination::queue("out")))
        .unwrap();
    let handle = pipeline.spawn();
    // Until the input is settled or the pipeline stopped on its own.
    for _ in 0..3000 {
        let s = handle.metrics().snapshot();
        if s.acked == 1 || handle.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_confirm_is_retried_with_the_returned_message() {
    let broker = setup().await;
    let sink = Flaky {
        inner: Arc::from(broker.producer().await.unwrap()),
        failures: 2,
        returns: true,
        calls: AtomicUsize::new(0),
    };
    let report = run(&broker, sink).await;
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.metrics.acked, 1);
    assert_eq!(report.metrics.retried, 2);
    let mut out = broker.consumer("out", Default::default()).await.unwrap();
    let d = out.receive().await.unwrap();
    assert_eq!(&d.message().payload()[..], b"PAYLOAD");
    d.ack().await.unwrap();
    assert_eq!(broker.queue_depth("out").unwrap().ready, 0, "sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_without_the_message_gives_up_and_leaves_the_input_unacked() {
    let broker = setup().await;
    let sink = Flaky {
        inner: Arc::from(broker.producer().await.unwrap()),
        failures: 1,
        returns: false,
        calls: AtomicUsize::new(0),
    };
    let report = run(&broker, sink).await;
    assert!(
        report.error.is_some(),
        "the default sink policy fails the pipeline"
    );
    assert_eq!(report.metrics.acked, 0);
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(
        depth.ready + depth.unacked,
        1,
        "the input waits for redelivery"
    );
}
