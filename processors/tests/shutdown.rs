//! On shutdown a pipeline stops intake but closes its sources only after the drain: a backend
//! may batch acks and finish them in `close` (SQS does), and RabbitMQ hands every unacked
//! delivery back when its channel closes, so a source closed before the drain would turn the
//! drain's acks into duplicates. Settling and closing are bounded too: a broker that never
//! answers an ack cannot hold a shutdown forever.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{
    Backend, Consumer, Delivery, Destination, Message, Nack, QueueSpec, Result, Settle,
};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{stage, Pipeline, Sink};

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Ack,
    Close,
}

type Log = Arc<Mutex<Vec<Event>>>;

/// A memory consumer whose acks and close are written to one log, in the order they happen;
/// with `hang_acks`, an ack never returns (a broker that stopped answering).
struct Logged {
    inner: Box<dyn Consumer>,
    log: Log,
    hang_acks: bool,
}

struct LoggedSettle {
    inner: Delivery,
    log: Log,
    hang: bool,
}

#[async_trait]
impl Settle for LoggedSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        self.inner.ack().await?;
        self.log.lock().unwrap().push(Event::Ack);
        Ok(())
    }
    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        self.inner.nack(nack).await
    }
    fn abandon(self: Box<Self>) {
        // Dropping the inner delivery releases it to the broker.
    }
}

#[async_trait]
impl Consumer for Logged {
    async fn receive(&mut self) -> Result<Delivery> {
        let d = self.inner.receive().await?;
        let (message, info) = (d.message().clone(), d.info().clone());
        let settle = LoggedSettle {
            inner: d,
            log: self.log.clone(),
            hang: self.hang_acks,
        };
        Ok(Delivery::new(message, info, Box::new(settle)))
    }
    async fn close(&mut self) -> Result<()> {
        self.log.lock().unwrap().push(Event::Close);
        self.inner.close().await
    }
}

/// A broker whose queue "in" holds `n` numbered messages, and an empty queue "out".
async fn seeded(n: usize) -> MemoryBackend {
    let broker = MemoryBackend::new();
    for q in ["in", "out"] {
        broker
            .topology()
            .declare_queue(&QueueSpec::new(q))
            .await
            .unwrap();
    }
    let producer = broker.producer().await.unwrap();
    for i in 0..n {
        producer
            .send(&Destination::queue("in"), Message::new(i.to_string()))
            .await
            .unwrap();
    }
    broker
}

#[tokio::test(start_paused = true)]
async fn sources_are_closed_once_after_the_drain_has_settled_every_input() {
    const N: usize = 200;
    let broker = seeded(N).await;
    let log = Log::default();
    let source = Logged {
        inner: broker.consumer("in", Default::default()).await.unwrap(),
        log: log.clone(),
        hang_acks: false,
    };
    let pipeline = Pipeline::builder()
        .max_in_flight(16)
        .source(Box::new(source) as Box<dyn Consumer>)
        .flow()
        .then(stage("slow").concurrency(8), |m: Message| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, mailroom_core::Error>(m)
        })
        .to(Sink::new(
            Arc::from(broker.producer().await.unwrap()),
            Destination::queue("out"),
        ))
        .unwrap();
    let handle = pipeline.spawn();
    while handle.metrics().snapshot().acked < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight_at_stop = handle.metrics().snapshot().in_flight;
    let acks_at_stop = log.lock().unwrap().len();
    let report = handle.shutdown().await.unwrap();
    assert!(report.error.is_none() && !report.timed_out, "{report:?}");
    assert!(in_flight_at_stop > 0, "nothing was in flight to drain");

    let log = log.lock().unwrap().clone();
    let acks = log.iter().filter(|e| **e == Event::Ack).count();
    assert_eq!(acks as u64, report.metrics.acked, "{report:?}");
    assert!(
        acks > acks_at_stop,
        "the drain acked nothing after the stop ({acks} acks, {acks_at_stop} before it)"
    );
    assert_eq!(
        log.iter().position(|e| *e == Event::Close),
        Some(log.len() - 1),
        "the source must be closed once, after the last ack: {log:?}"
    );
    // Every input was either acked or handed back unread: none is left held.
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(
        depth.ready as u64 + report.metrics.acked,
        N as u64,
        "{depth:?}"
    );
}

/// Filtered inputs are acked by the pipeline's settler task; with acks that never return, the
/// shutdown still ends, says it timed out, and leaves every input to the broker.
#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_even_when_acks_never_return() {
    const N: usize = 10;
    let broker = seeded(N).await;
    let log = Log::default();
    let source = Logged {
        inner: broker.consumer("in", Default::default()).await.unwrap(),
        log: log.clone(),
        hang_acks: true,
    };
    let pipeline = Pipeline::builder()
        .drain_timeout(Duration::from_secs(2))
        .source(Box::new(source) as Box<dyn Consumer>)
        .flow()
        .filter("drop-all", |_: &Message| false)
        .to(Sink::new(
            Arc::from(broker.producer().await.unwrap()),
            Destination::queue("out"),
        ))
        .unwrap();
    let handle = pipeline.spawn();
    while handle.metrics().snapshot().received < N as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = tokio::time::Instant::now();
    // Paused clock: this timeout passes (virtually) only if the shutdown hangs.
    let report = tokio::time::timeout(Duration::from_secs(600), handle.shutdown())
        .await
        .expect("the shutdown must end")
        .unwrap();
    assert!(report.timed_out, "{report:?}");
    assert!(
        started.elapsed() <= Duration::from_secs(4),
        "bounded by twice the drain timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(report.metrics.acked, 0);
    assert!(report.unfinished > 0, "{report:?}");
    assert_eq!(log.lock().unwrap().last(), Some(&Event::Close));
    let depth = broker.queue_depth("in").unwrap();
    assert_eq!(depth.ready, N, "every input back in the queue: {depth:?}");
}

/// An ack that never returns is cancelled when settling times out: its input was not acked,
/// so it counts as unfinished (the broker gets it back) and its in-flight slot is free again,
/// whichever task was awaiting it. `acked + unfinished` then accounts for every input.
#[tokio::test(start_paused = true)]
async fn a_cancelled_ack_counts_its_input_unfinished_and_frees_its_slot() {
    const N: usize = 10;
    // The settler task awaits the acks of filtered inputs; the sink awaits those of sent ones.
    for filtered in [true, false] {
        let broker = seeded(N).await;
        let source = Logged {
            inner: broker.consumer("in", Default::default()).await.unwrap(),
            log: Log::default(),
            hang_acks: true,
        };
        let flow = Pipeline::builder()
            .drain_timeout(Duration::from_secs(2))
            .source(Box::new(source) as Box<dyn Consumer>)
            .flow()
            .filter("drop-some", move |_: &Message| !filtered);
        let pipeline = flow
            .to(Sink::new(
                Arc::from(broker.producer().await.unwrap()),
                Destination::queue("out"),
            ))
            .unwrap();
        let handle = pipeline.spawn();
        // The sink awaits its first ack and takes no more than its first batch.
        while handle.metrics().snapshot().received == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let report = tokio::time::timeout(Duration::from_secs(600), handle.shutdown())
            .await
            .expect("the shutdown must end")
            .unwrap();
        assert!(report.timed_out, "filtered {filtered}: {report:?}");
        assert_eq!(report.metrics.acked, 0, "filtered {filtered}: {report:?}");
        assert_eq!(
            report.unfinished, report.metrics.received,
            "filtered {filtered}: every input was left unsettled: {report:?}"
        );
        assert_eq!(
            report.metrics.in_flight, 0,
            "filtered {filtered}: no slot stays held after the run: {report:?}"
        );
        let depth = broker.queue_depth("in").unwrap();
        assert_eq!(
            depth.ready, N,
            "filtered {filtered}: every input back: {depth:?}"
        );
    }
}
