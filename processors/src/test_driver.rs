//! A test driver: run a pipeline on an in-process broker, pipe input, move a virtual clock,
//! read outputs and side outputs — deterministic, with no sleeps.
//!
//! Use it under tokio's paused clock (`#[tokio::test(start_paused = true)]`, which needs tokio's
//! `test-util` feature; `TestDriver::advance` needs this crate's `test-driver` feature). The
//! driver never sleeps: it yields until the pipeline stops making progress, so timers (batch
//! deadlines, processing-time windows, retry backoff) fire only when the test advances time.
//!
//! ```no_run
//! # async fn demo() -> mailroom_core::Result<()> {
//! # let backend: std::sync::Arc<dyn mailroom_core::Backend> = todo!();
//! use mailroom_core::Message;
//! use mailroom_processors::{Pipeline, TestDriver};
//!
//! let mut driver = TestDriver::new(backend, &["in", "out"]).await?;
//! let pipeline = Pipeline::builder()
//!     .source(driver.consumer("in").await?)
//!     .flow()
//!     .map("upper", |m: Message| Message::new(m.payload().to_ascii_uppercase()))
//!     .to(driver.sink("out"))?;
//! driver.start(pipeline);
//! driver.pipe("in", Message::new("hello")).await?;
//! driver.run_until_idle().await;
//! assert_eq!(driver.read("out").await?.len(), 1);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use futures_util::FutureExt;
use mailroom_core::{Backend, Consumer, Destination, Error, Message, Producer, QueueSpec, Result};

use crate::flow::Pipeline;
use crate::metrics::{Metrics, Snapshot};
use crate::run::{PipelineHandle, Report};
use crate::sink::Sink;

/// Drives a pipeline on a broker (normally the in-memory one) for tests.
pub struct TestDriver {
    backend: Arc<dyn Backend>,
    producer: Arc<dyn Producer>,
    running: Option<PipelineHandle>,
}

/// How many quiet scheduler rounds count as idle.
const IDLE_ROUNDS: usize = 64;
/// A bound on the rounds `run_until_idle` waits, so a busy pipeline cannot hang a test.
const MAX_ROUNDS: usize = 1_000_000;

impl TestDriver {
    /// A driver on `backend`, declaring `queues` (plain queues).
    pub async fn new(backend: Arc<dyn Backend>, queues: &[&str]) -> Result<Self> {
        for q in queues {
            backend
                .topology()
                .declare_queue(&QueueSpec::new(*q))
                .await?;
        }
        let producer: Arc<dyn Producer> = Arc::from(backend.producer().await?);
        Ok(TestDriver {
            backend,
            producer,
            running: None,
        })
    }

    /// The broker.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Declare another queue (e.g. with a dead-letter queue of its own).
    pub async fn declare(&self, spec: QueueSpec) -> Result<()> {
        self.backend.topology().declare_queue(&spec).await
    }

    /// A consumer on `queue`, to use as a pipeline source.
    pub async fn consumer(&self, queue: &str) -> Result<Box<dyn Consumer>> {
        self.backend.consumer(queue, Default::default()).await
    }

    /// A sink writing to `queue`.
    pub fn sink(&self, queue: &str) -> Sink {
        Sink::new(self.producer.clone(), Destination::queue(queue))
    }

    /// Start `pipeline` in the background.
    pub fn start(&mut self, pipeline: Pipeline) {
        self.running = Some(pipeline.spawn());
    }

    /// Send `message` to `queue` (confirmed when this returns).
    pub async fn pipe(&self, queue: &str, message: Message) -> Result<()> {
        self.producer
            .send(&Destination::queue(queue), message)
            .await
            .map(|_| ())
    }

    /// The running pipeline's counters.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.running.as_ref().map(PipelineHandle::metrics)
    }

    /// The running pipeline's counters now (all zero when none runs).
    pub fn snapshot(&self) -> Snapshot {
        self.metrics().map(Metrics::snapshot).unwrap_or_default()
    }

    /// Let the pipeline work until it makes no more progress without time passing.
    pub async fn run_until_idle(&self) {
        let mut last = self.snapshot();
        let mut quiet = 0;
        for _ in 0..MAX_ROUNDS {
            // Yielding keeps this task runnable, so a paused clock never auto-advances: only
            // `advance` moves time.
            tokio::task::yield_now().await;
            let now = self.snapshot();
            if now == last {
                quiet += 1;
                if quiet >= IDLE_ROUNDS {
                    return;
                }
            } else {
                quiet = 0;
                last = now;
            }
            if self
                .running
                .as_ref()
                .is_some_and(PipelineHandle::is_finished)
            {
                return;
            }
        }
    }

    /// Move the paused clock forward by `by`, then run until idle.
    #[cfg(feature = "test-driver")]
    pub async fn advance(&self, by: std::time::Duration) {
        tokio::time::advance(by).await;
        self.run_until_idle().await;
    }

    /// Take every message waiting in `queue` now (acked: reading consumes them).
    pub async fn read(&self, queue: &str) -> Result<Vec<Message>> {
        let mut consumer = self.backend.consumer(queue, Default::default()).await?;
        let mut out = Vec::new();
        // `receive` is cancel-safe: polling it once and dropping it loses nothing.
        while let Some(received) = consumer.receive().now_or_never() {
            let delivery = received?;
            out.push(delivery.message().clone());
            delivery.ack().await?;
        }
        consumer.close().await?;
        Ok(out)
    }

    /// The payloads waiting in `queue`, as UTF-8 text (consumed).
    pub async fn read_text(&self, queue: &str) -> Result<Vec<String>> {
        Ok(self
            .read(queue)
            .await?
            .iter()
            .map(|m| String::from_utf8_lossy(m.payload()).into_owned())
            .collect())
    }

    /// Stop the pipeline gracefully (drain, flush windows and batches) and return its report.
    pub async fn shutdown(&mut self) -> Result<Report> {
        match self.running.take() {
            Some(handle) => handle.shutdown().await,
            None => Err(Error::invalid_input("no pipeline is running")),
        }
    }

    /// Wait for the pipeline to end by itself (its sources closed, or a stage failed it).
    pub async fn join(&mut self) -> Result<Report> {
        match self.running.take() {
            Some(handle) => handle.join().await,
            None => Err(Error::invalid_input("no pipeline is running")),
        }
    }

    /// Kill the pipeline as a crash would: nothing drained, unsettled inputs redelivered.
    pub async fn crash(&mut self) {
        if let Some(handle) = self.running.take() {
            handle.abort().await;
        }
    }
}
