//! Exactly-once pipelines: consume, transform, produce and commit the inputs in one transaction.
//!
//! [`ExactlyOnce`] runs a transform over a queue on a [`Transactional`] unit: each batch of
//! inputs, the outputs made from them and any dead letters are committed in one broker
//! transaction, so a reader of the sink that reads committed data only sees every input's
//! outputs exactly once, whatever crashes, restarts and rebalances happen in between.
//!
//! ```no_run
//! # async fn demo(kafka: std::sync::Arc<dyn mailroom_core::Backend>) -> mailroom_core::Result<()> {
//! use mailroom_core::{Destination, Message, TransactionOptions};
//! use mailroom_processors::ExactlyOnce;
//!
//! let report = ExactlyOnce::builder(kafka.clone(), "orders", TransactionOptions::new("enricher-1"))
//!     .sink(kafka, Destination::queue("enriched-orders"))
//!     .dead_letter(Destination::queue("orders.dlq"))
//!     .transform(|input| {
//!         let order: serde_json::Value = mailroom_core::json::decode(&input.message)?;
//!         Ok(vec![mailroom_core::json::builder(&order)?.build()?])
//!     })
//!     .build()
//!     .await?
//!     .run_until_ctrl_c()
//!     .await;
//! # let _ = report; Ok(()) }
//! ```
//!
//! **What it covers.** Each input is consumed exactly once together with its outputs (zero, one
//! or many) or its dead letter: they commit in the same transaction as the input's offset, or
//! abort with it and are produced again from the redelivered input. A crashed instance's open
//! transaction is aborted when it restarts with the same id (or when the broker's transaction
//! timeout expires), and a stalled instance that wakes up after its successor started is fenced
//! and stops with [`ErrorKind::Fenced`].
//!
//! **What it does not cover.**
//! - Side effects of the transform outside the broker (an HTTP call, a database write, a log
//!   line, a metric) happen again for every input of an aborted transaction: at least once.
//!   Make them idempotent, or keep them out of the transform.
//! - Readers of the sink that read uncommitted data see the outputs of aborted transactions.
//!   (Kafka consumers read committed data by default.)
//! - A reader's own processing of the outputs is as exactly-once as the reader makes it: a
//!   plain consumer that acks after a side effect is at least once.
//! - A transform that is not deterministic (time, randomness, lookups that change) may make
//!   different outputs on the retry than on the aborted attempt; only the retry's are visible.
//! - Outputs get fresh message ids on each attempt unless the transform derives them from the
//!   input (`Message::builder(..).id(..)`), which lets a downstream de-duplicate by id across
//!   the boundary of this guarantee.
//!
//! **Costs.**
//! - *Latency:* an output becomes visible when its transaction commits, up to
//!   [`commit_interval`](ExactlyOnceBuilder::commit_interval) after its input arrived, plus the
//!   commit itself (the offsets to the group coordinator, then the commit to the transaction
//!   coordinator and its markers on every partition written: several round trips per batch;
//!   about 10 ms for a small batch against Apache Kafka 4.1.1 on loopback on a 2-core machine,
//!   as `backends/kafka/tests/transactions.rs` prints).
//!   Committed-only readers of a partition also wait behind the oldest transaction still open
//!   on it.
//! - *Throughput:* one commit per batch, not pipelined with the next batch.
//! - *Memory:* inputs are not kept (an abort reads them again from the broker); the unit keeps
//!   an offset range per input partition and a delivery report per output of the open
//!   transaction, at most [`max_batch`](ExactlyOnceBuilder::max_batch) inputs' worth.
//! - *Transaction timeout:* a transaction left open longer than the broker's transaction
//!   timeout ([`TransactionOptions::timeout`], Kafka's `transaction.timeout.ms`, 60 s by
//!   default) is aborted by the broker and the unit fenced; `commit_interval` must stay well
//!   below it. The same timeout bounds how long a crashed instance that never restarts holds up
//!   committed-only readers.
//!
//! **Where it is available.** The source must declare `transactions`, and the sink must be the
//! same cluster, since one transaction cannot span two brokers: the builder checks both
//! ([`Backend::cluster_id`]) and refuses with `Unsupported` (no transactions) or `Config`
//! (another broker, or one whose identity cannot be told). Of mailroom's backends, Kafka
//! declares transactions. The outputs are produced by the unit, on the source's connection.
//!
//! **Scale-out.** Run N instances with N different ids on the same queue: the broker's group
//! shares the input partitions among them. Give each instance the same id across restarts.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::{
    Backend, Capabilities, Capability, Destination, Error, ErrorKind, Message, Result,
    TransactionInput, TransactionOptions, Transactional,
};
use tokio::time::Instant;

use crate::stage::panic_error;

/// Turns one input into its outputs (none filters it out). An `Err` or a panic dead-letters
/// the input when a dead-letter destination is set, and stops the pipeline otherwise.
pub type ExactlyOnceTransform =
    Box<dyn FnMut(&TransactionInput) -> Result<Vec<Message>> + Send + 'static>;

/// What an exactly-once run committed, and how it ended.
#[derive(Debug, Default)]
pub struct ExactlyOnceReport {
    /// Inputs consumed by committed transactions.
    pub inputs: u64,
    /// Outputs made visible by committed transactions (dead letters not included).
    pub outputs: u64,
    /// Inputs dead-lettered by committed transactions.
    pub dead_lettered: u64,
    /// Transactions committed (with at least one input or output).
    pub commits: u64,
    /// Transactions aborted; their inputs were received again.
    pub aborts: u64,
    /// The error that stopped the run, if any.
    pub error: Option<Error>,
}

/// Configures an exactly-once pipeline: see the [module docs](self).
pub struct ExactlyOnceBuilder {
    source: Arc<dyn Backend>,
    queue: String,
    options: TransactionOptions,
    sink: Option<(Arc<dyn Backend>, Destination)>,
    dead_letter: Option<Destination>,
    transform: ExactlyOnceTransform,
    max_batch: usize,
    commit_interval: Duration,
    max_aborts_in_a_row: u32,
}

/// An exactly-once pipeline, ready to run: see the [module docs](self).
pub struct ExactlyOnce {
    unit: Box<dyn Transactional>,
    queue: String,
    sink: Destination,
    sink_capabilities: Capabilities,
    sink_backend: &'static str,
    dead_letter: Option<Destination>,
    transform: ExactlyOnceTransform,
    max_batch: usize,
    commit_interval: Duration,
    max_aborts_in_a_row: u32,
}

impl ExactlyOnce {
    /// Start configuring a pipeline that consumes `queue` on `source` through a transactional
    /// unit opened with `options` (its id: one per instance, the same across restarts).
    pub fn builder(
        source: Arc<dyn Backend>,
        queue: impl Into<String>,
        options: TransactionOptions,
    ) -> ExactlyOnceBuilder {
        ExactlyOnceBuilder {
            source,
            queue: queue.into(),
            options,
            sink: None,
            dead_letter: None,
            transform: Box::new(|input| Ok(vec![input.message.clone()])),
            max_batch: 500,
            commit_interval: Duration::from_millis(100),
            max_aborts_in_a_row: 5,
        }
    }
}

impl ExactlyOnceBuilder {
    /// Where outputs go: `destination` on `backend`, which must be the source's cluster.
    pub fn sink(mut self, backend: Arc<dyn Backend>, destination: Destination) -> Self {
        self.sink = Some((backend, destination));
        self
    }

    /// Where inputs the transform fails on go, stamped with the reason, in the same
    /// transaction (so a dead letter is exactly-once too). Without one, such an input stops
    /// the pipeline.
    pub fn dead_letter(mut self, destination: Destination) -> Self {
        self.dead_letter = Some(destination);
        self
    }

    /// The transform (the default forwards each input unchanged).
    pub fn transform(
        mut self,
        f: impl FnMut(&TransactionInput) -> Result<Vec<Message>> + Send + 'static,
    ) -> Self {
        self.transform = Box::new(f);
        self
    }

    /// Most inputs per transaction (at least 1; default 500).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Longest a transaction stays open after its first input before it commits (default
    /// 100 ms): the latency every output pays, traded against the cost of a commit.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Aborted transactions in a row (failed deliveries, refused commits, failed sends) after
    /// which the pipeline stops with the last error instead of trying again (default 5).
    pub fn max_aborts_in_a_row(mut self, n: u32) -> Self {
        self.max_aborts_in_a_row = n.max(1);
        self
    }

    /// Check that the source and sink can share a transaction, then open the unit.
    ///
    /// `Config` without a sink; `Unsupported` (before any I/O) when the source or the sink
    /// does not declare `transactions`; `Config` when the sink is another broker, or another
    /// cluster, or a cluster whose identity cannot be told.
    pub async fn build(self) -> Result<ExactlyOnce> {
        let operation = "exactly_once";
        let Some((sink_backend, sink)) = self.sink else {
            return Err(Error::config(
                "an exactly-once pipeline needs a sink (ExactlyOnceBuilder::sink)",
            )
            .with_operation(operation));
        };
        for (role, backend) in [("source", &self.source), ("sink", &sink_backend)] {
            if !backend.capabilities().supports(Capability::Transactions) {
                return Err(Error::unsupported(format!(
                    "exactly-once needs transactions, and the {role} backend '{}' does not \
                     declare them; use a Pipeline (at least once) instead",
                    backend.name()
                ))
                .with_backend(backend.name())
                .with_operation(operation));
            }
        }
        if self.source.name() != sink_backend.name() {
            return Err(Error::config(format!(
                "exactly-once needs the sink on the source's cluster: the source is '{}' and the \
                 sink '{}', and one transaction cannot span two brokers",
                self.source.name(),
                sink_backend.name()
            ))
            .with_operation(operation));
        }
        if !Arc::ptr_eq(&self.source, &sink_backend) {
            let source_id = self.source.cluster_id().await?;
            let sink_id = sink_backend.cluster_id().await?;
            match (source_id, sink_id) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    let show = |id: Option<String>| id.unwrap_or_else(|| "unknown".to_owned());
                    return Err(Error::config(format!(
                        "exactly-once needs the sink on the source's cluster: the source is \
                         cluster {} and the sink cluster {}; one transaction cannot span two \
                         clusters (pass the same backend for both when in doubt)",
                        show(a),
                        show(b)
                    ))
                    .with_backend(self.source.name())
                    .with_operation(operation));
                }
            }
        }
        let unit = self.source.transactional(&self.queue, self.options).await?;
        Ok(ExactlyOnce {
            unit,
            queue: self.queue,
            sink,
            sink_capabilities: sink_backend.capabilities().clone(),
            sink_backend: sink_backend.name(),
            dead_letter: self.dead_letter,
            transform: self.transform,
            max_batch: self.max_batch,
            commit_interval: self.commit_interval,
            max_aborts_in_a_row: self.max_aborts_in_a_row,
        })
    }
}

/// The run's state between transactions.
#[derive(Default)]
struct Progress {
    report: ExactlyOnceReport,
    /// Dead letters in the open transaction (the unit counts them as outputs).
    dead_in_transaction: u64,
    aborts_in_a_row: u32,
}

/// How processing one input ended.
enum Processed {
    Done,
    /// The transaction cannot commit as it is (a send failed part-way through an input's
    /// outputs): abort it, then go on if `error` is temporary.
    Abort(Error),
}

impl ExactlyOnce {
    /// Run until an error stops it (a queue has no end).
    pub async fn run(self) -> ExactlyOnceReport {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Run until Ctrl-C (SIGINT), then commit the open transaction and report.
    pub async fn run_until_ctrl_c(self) -> ExactlyOnceReport {
        self.run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    }

    /// Run until `shutdown` resolves, then commit the open transaction, close the unit and
    /// report. A run stopped by an error aborts the open transaction instead.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> ExactlyOnceReport {
        let mut progress = Progress::default();
        let stopped = self.run_loop(shutdown, &mut progress).await;
        match stopped {
            Ok(()) => {
                if let Err(e) = self.commit(&mut progress).await {
                    progress.report.error = Some(e);
                }
            }
            Err(e) => {
                if let Err(abort) = self.unit.abort().await {
                    tracing::debug!(error = %abort, "abort after a stop failed");
                }
                progress.report.error = Some(e);
            }
        }
        if let Err(e) = self.unit.close().await {
            tracing::warn!(error = %e, "closing the transactional unit failed");
        }
        progress.report
    }

    async fn run_loop(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        progress: &mut Progress,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let mut commit_at: Option<Instant> = None;
        let mut receive_failures = 0u32;
        loop {
            let due = self.unit.pending().inputs >= self.max_batch
                || commit_at.is_some_and(|at| Instant::now() >= at);
            if due {
                commit_at = None;
                match self.commit(progress).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::Aborted => self.aborted(e, progress).await?,
                    Err(e) => return Err(e),
                }
                continue;
            }
            let received = tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep_until(commit_at.unwrap_or_else(Instant::now)), if commit_at.is_some() => continue,
                received = self.unit.receive() => received,
            };
            let input = match received {
                Ok(input) => {
                    receive_failures = 0;
                    input
                }
                Err(e) if e.kind() == ErrorKind::Closed => return Ok(()),
                Err(e) if e.is_temporary() && receive_failures < 10 => {
                    receive_failures += 1;
                    tracing::warn!(error = %e, receive_failures, "receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << receive_failures.min(6))).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            commit_at.get_or_insert_with(|| Instant::now() + self.commit_interval);
            match self.process(input, progress).await? {
                Processed::Done => {}
                Processed::Abort(e) => {
                    commit_at = None;
                    if !e.is_temporary() {
                        return Err(e);
                    }
                    self.unit.abort().await?;
                    progress.dead_in_transaction = 0;
                    self.aborted(e, progress).await?;
                }
            }
        }
    }

    /// Transform one input and add its outputs (or its dead letter) to the transaction.
    async fn process(
        &mut self,
        input: TransactionInput,
        progress: &mut Progress,
    ) -> Result<Processed> {
        let transform = &mut self.transform;
        let made = catch_unwind(AssertUnwindSafe(|| transform(&input)))
            .unwrap_or_else(|panic| Err(panic_error("transform", panic)));
        // Outputs the sink would refuse before any I/O fail this input alone, before any of
        // its outputs is in the transaction, so it can still be dead-lettered cleanly.
        let checked = made.and_then(|outputs| {
            for output in &outputs {
                self.sink_capabilities
                    .check_message(output, self.sink_backend, "send")?;
            }
            Ok(outputs)
        });
        let outputs = match checked {
            Ok(outputs) => outputs,
            Err(e) => return self.failed(input, e, progress).await,
        };
        for output in outputs {
            if let Err(e) = self.unit.send(&self.sink, output).await {
                return Ok(Processed::Abort(e));
            }
        }
        Ok(Processed::Done)
    }

    /// The transform failed on `input`: dead-letter it in the transaction, or stop.
    async fn failed(
        &mut self,
        input: TransactionInput,
        error: Error,
        progress: &mut Progress,
    ) -> Result<Processed> {
        let Some(dead_letter) = self.dead_letter.clone() else {
            return Err(Error::new(
                error.kind(),
                format!(
                    "the transform failed on input {} of '{}' and no dead-letter destination is \
                     set: {}",
                    input.message.id(),
                    self.queue,
                    error.message()
                ),
            )
            .set_temporary(false)
            .with_boxed_source(Box::new(error))
            .with_operation("exactly_once"));
        };
        let mut dead = input.message;
        stamp_dead_letter(
            &mut dead,
            &self.queue,
            &error.to_string(),
            input.info.attempt,
        );
        match self.unit.send(&dead_letter, dead).await {
            Ok(()) => {
                progress.dead_in_transaction += 1;
                Ok(Processed::Done)
            }
            Err(e) => Ok(Processed::Abort(e)),
        }
    }

    /// Commit the open transaction and count what it held.
    async fn commit(&mut self, progress: &mut Progress) -> Result<()> {
        let committed = self.unit.commit().await;
        let dead = std::mem::take(&mut progress.dead_in_transaction);
        let counts = committed?;
        if counts.inputs + counts.outputs > 0 {
            let report = &mut progress.report;
            report.commits += 1;
            report.inputs += counts.inputs as u64;
            report.outputs += (counts.outputs as u64).saturating_sub(dead);
            report.dead_lettered += dead;
        }
        progress.aborts_in_a_row = 0;
        Ok(())
    }

    /// A transaction was aborted (its inputs come again): back off, or stop after too many.
    async fn aborted(&mut self, error: Error, progress: &mut Progress) -> Result<()> {
        progress.report.aborts += 1;
        progress.aborts_in_a_row += 1;
        if progress.aborts_in_a_row >= self.max_aborts_in_a_row {
            return Err(error);
        }
        tracing::warn!(error = %error, aborts_in_a_row = progress.aborts_in_a_row, "transaction aborted; its inputs come again");
        let pause = Duration::from_millis(100 << progress.aborts_in_a_row.min(5));
        tokio::time::sleep(pause).await;
        Ok(())
    }
}

impl std::fmt::Debug for ExactlyOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactlyOnce")
            .field("queue", &self.queue)
            .field("sink", &self.sink)
            .field("dead_letter", &self.dead_letter)
            .field("max_batch", &self.max_batch)
            .field("commit_interval", &self.commit_interval)
            .finish()
    }
}
