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
//!
//! **Where the code is.** `builder` configures a run and checks, before any I/O where it can,
//! that the source and the sink can share a transaction; `run_loop` receives, transforms,
//! sends and commits (or aborts and starts again).
//!
//! [`ErrorKind::Fenced`]: mailroom_core::ErrorKind::Fenced
//! [`TransactionOptions::timeout`]: mailroom_core::TransactionOptions::timeout
//! [`Backend::cluster_id`]: mailroom_core::Backend::cluster_id

use std::time::Duration;

use mailroom_core::{
    Capabilities, Destination, Error, Message, Result, TransactionInput, Transactional,
};

mod builder;
mod run_loop;

pub use builder::ExactlyOnceBuilder;

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
