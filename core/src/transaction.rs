//! Consume-transform-produce committed atomically: the inputs consumed and the outputs produced
//! in one transaction become durable together, or not at all.
//!
//! [`Backend::transactional`](crate::Backend::transactional) opens a [`Transactional`] unit on
//! a queue. Inputs received through it are not settled one by one; outputs sent through it are
//! not visible to readers that only read committed data. [`Transactional::commit`] then makes
//! both true at once: the inputs count as consumed (they are not delivered again) and the outputs
//! become visible. [`Transactional::abort`] discards the outputs and hands the inputs back, to be
//! received again through the same unit.
//!
//! ```no_run
//! # async fn demo(broker: std::sync::Arc<dyn mailroom_core::Backend>) -> mailroom_core::Result<()> {
//! use mailroom_core::{Destination, ErrorKind, TransactionOptions};
//!
//! // One id per instance, the same across restarts: a restarted instance fences its crashed
//! // predecessor and aborts whatever transaction it left open.
//! let mut unit = broker.transactional("orders", TransactionOptions::new("enricher-1")).await?;
//! let out = Destination::queue("enriched-orders");
//! loop {
//!     for _ in 0..100 {
//!         let Some(input) = unit.receive_timeout(std::time::Duration::from_millis(100)).await? else { break };
//!         unit.send(&out, input.message.clone()).await?;
//!     }
//!     match unit.commit().await {
//!         Ok(_) => {}
//!         // Aborted: the outputs are gone and the inputs come again through `unit`.
//!         Err(e) if e.kind() == ErrorKind::Aborted => continue,
//!         // Fenced, or the outcome is unknown: this unit is finished; open a new one.
//!         Err(e) => return Err(e),
//!     }
//! }
//! # }
//! ```

use std::time::Duration;

use async_trait::async_trait;

use crate::delivery::DeliveryInfo;
use crate::error::Result;
use crate::message::Message;
use crate::producer::Destination;

/// How a transactional unit is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransactionOptions {
    /// The unit's identity, stable across restarts of the same instance and unique among the
    /// instances running at once. Opening a unit with the id of another one (a crashed or
    /// stalled predecessor, a "zombie") fences that one: its open transaction is aborted and its
    /// later calls fail with [`ErrorKind::Fenced`](crate::ErrorKind::Fenced).
    pub id: String,
    /// How long a transaction may stay open before the broker aborts it by itself; the backend's
    /// default if unset. A unit that crashes mid-transaction and never comes back holds up
    /// committed-only readers of its outputs' partitions for at most this long.
    pub timeout: Option<Duration>,
}

impl TransactionOptions {
    /// Options for the unit with this identity.
    pub fn new(id: impl Into<String>) -> Self {
        TransactionOptions {
            id: id.into(),
            timeout: None,
        }
    }

    /// Let the broker abort a transaction left open longer than this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// An input received inside a transaction: consumed when the transaction commits, received again
/// after it aborts. There is nothing to settle: the commit settles every input at once.
#[derive(Debug, Clone)]
pub struct TransactionInput {
    /// The message.
    pub message: Message,
    /// Where it came from (queue, partition, offset).
    pub info: DeliveryInfo,
}

/// How many inputs and outputs a transaction holds, or held when it committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionCounts {
    /// Inputs received in the transaction.
    pub inputs: usize,
    /// Outputs sent in the transaction.
    pub outputs: usize,
}

/// A consumer and a producer whose work is committed atomically (see the [module
/// docs](self)).
///
/// A transaction begins with the first `receive` or `send` after the previous one ended, and
/// ends only by `commit` or `abort` (or `close`): never behind the caller's back, so an output is
/// never committed with inputs other than the ones received alongside it.
///
/// **Errors.** Every error says what state the unit is in:
/// - [`ErrorKind::Aborted`](crate::ErrorKind::Aborted) (temporary): the transaction was rolled
///   back; its outputs are discarded and its inputs will be received again. Carry on.
/// - [`ErrorKind::Fenced`](crate::ErrorKind::Fenced) (permanent): another unit with the same id
///   took over. Stop this instance.
/// - any other permanent error from `commit` or `abort`: the unit cannot continue (a fatal
///   client error, or a commit whose outcome is unknown). Close it and open a new one with the
///   same id, which finishes the old transaction either way before it starts.
/// - a `send` refused before any I/O (too large, an invalid or unknown destination) leaves the
///   transaction open and unchanged, and returns the message inside the error.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Transactional: Send {
    /// The next input; waits until one arrives. Cancel-safe.
    async fn receive(&mut self) -> Result<TransactionInput>;

    /// The next input, or `None` if none arrives within `timeout`.
    async fn receive_timeout(&mut self, timeout: Duration) -> Result<Option<TransactionInput>> {
        match tokio::time::timeout(timeout, self.receive()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// An input that is already here, without waiting: `None` when `receive` would wait.
    fn try_receive(&mut self) -> Option<Result<TransactionInput>> {
        futures_util::FutureExt::now_or_never(self.receive())
    }

    /// Add an output to the open transaction. It resolves once the output is part of the
    /// transaction; committed-only readers see it when `commit` returns `Ok`, and never if the
    /// transaction aborts.
    async fn send(&mut self, destination: &Destination, message: Message) -> Result<()>;

    /// What the open transaction holds so far.
    fn pending(&self) -> TransactionCounts;

    /// Commit the open transaction: every input received in it is consumed and every output sent
    /// in it is visible, atomically. With nothing open it does nothing and returns zero counts.
    async fn commit(&mut self) -> Result<TransactionCounts>;

    /// Roll the open transaction back: its outputs are discarded and its inputs will be received
    /// again through this unit.
    async fn abort(&mut self) -> Result<()>;

    /// Abort the open transaction (if any) and release the unit; later calls fail with `Closed`.
    async fn close(&mut self) -> Result<()>;
}
