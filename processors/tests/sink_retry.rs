//! A sink keeps no copy of each output: a retry resends the message the producer handed back
//! inside its error, and a failure that does not hand it back is given up (never acked).

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::layer::{ChaosLayer, Fault, LayerStack, Operation, When};
use mailroom_core::{Backend, Destination, ErrorKind, Message, QueueSpec};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Pipeline, Sink};

/// The first `failures` confirms fail as timeouts (the message is never sent), handing the
/// message back inside the error when `returns`.
fn flaky(failures: u64, returns: bool) -> ChaosLayer {
    let fault = if returns {
        Fault::Fail(ErrorKind::Timeout)
    } else {
        Fault::FailLosingMessage(ErrorKind::Timeout)
    };
    ChaosLayer::new(0).inject(Operation::Confirm, When::First(failures), fault)
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

async fn run(broker: &MemoryBackend, chaos: ChaosLayer) -> mailroom_processors::Report {
    let flaky = LayerStack::new()
        .layer(chaos)
        .apply(Arc::new(broker.clone()));
    let sink = flaky.producer().await.unwrap();
    let pipeline = Pipeline::builder()
        .source(broker.consumer("in", Default::default()).await.unwrap())
        .flow()
        .map("upper", |m: Message| {
            Message::new(m.payload().to_ascii_uppercase())
        })
        .to(Sink::new(Arc::from(sink), Destination::queue("out")))
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
    let report = run(&broker, flaky(2, true)).await;
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
    let report = run(&broker, flaky(1, false)).await;
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
