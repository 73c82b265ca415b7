//! Planned faults for tests: fail, delay or slow down the Nth operation of a kind, the same
//! way on every run of the same plan. The plan and its counts are in `chaos/plan.rs`; this file
//! is the layer that applies it to a backend's producers, consumers, settles and units.

mod plan;

use plan::Rule;
pub use plan::{Chaos, ChaosCounts, Fault, Operation, When};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{wrap_settle, Layer, Open};
use crate::backend::Backend;
use crate::consumer::Consumer;
use crate::delivery::{Delivery, Nack, Settle, Settlement};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::producer::{Destination, PendingConfirm, Producer, Receipt};
use crate::transaction::{TransactionCounts, TransactionInput, Transactional};

/// Injects planned faults into a backend, for tests: the Nth send fails, every receive is
/// slow, confirms come one at a time, an ack loses its connection. The plan is deterministic:
/// numbered operations and a seed for `When::Chance`, so a failing run repeats.
///
/// Clone it before applying it to keep a handle on its [`counts`](ChaosLayer::counts):
///
/// ```
/// use std::time::Duration;
/// use mailroom_core::layer::{ChaosLayer, Fault, LayerStack, Operation, When};
/// use mailroom_core::ErrorKind;
///
/// let chaos = ChaosLayer::new(7)
///     .inject(Operation::Confirm, When::First(2), Fault::Fail(ErrorKind::Timeout))
///     .inject(Operation::Receive, When::Always, Fault::Delay(Duration::from_millis(1)));
/// let stack = LayerStack::new().layer(chaos.clone());
/// # let _ = stack;
/// ```
///
/// An operation kind with nothing planned keeps its fast path: batches go to the backend as
/// batches and `try_receive` is forwarded. With receive faults planned, `try_receive` defers to
/// `receive` (answers `None`), so every planned fault applies in order.
#[derive(Clone)]
pub struct ChaosLayer {
    chaos: Arc<Chaos>,
}

impl ChaosLayer {
    /// An empty plan with this seed.
    pub fn new(seed: u64) -> Self {
        ChaosLayer {
            chaos: Arc::new(Chaos::new(seed)),
        }
    }

    /// Add a rule: the operations of `operation` that `when` picks suffer `fault`. The first
    /// rule that picks an operation applies. Rules are added before the layer is applied.
    pub fn inject(mut self, operation: Operation, when: When, fault: Fault) -> Self {
        let rule = Rule {
            operation,
            when,
            fault,
        };
        match Arc::get_mut(&mut self.chaos) {
            Some(chaos) => chaos.rules.push(rule),
            None => {
                // Shared already: the clones keep the old plan, this layer gets a new one.
                let mut chaos = Chaos::new(self.chaos.seed);
                chaos.rules = self.chaos.rules.clone();
                chaos.rules.push(rule);
                self.chaos = Arc::new(chaos);
            }
        }
        self
    }

    /// The counts of one kind of operation so far.
    pub fn counts(&self, operation: Operation) -> ChaosCounts {
        self.chaos.counts(operation)
    }

    /// The plan and its counts.
    pub fn chaos(&self) -> &Arc<Chaos> {
        &self.chaos
    }
}

impl fmt::Debug for ChaosLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.chaos, f)
    }
}

impl Layer for ChaosLayer {
    fn name(&self) -> &'static str {
        "chaos"
    }

    fn admit(&self, backend: &dyn Backend, _open: Open<'_>) -> Result<()> {
        let (n, fault) = self.chaos.next(Operation::Open);
        // Opens are synchronous here: a delay cannot apply, only a failure.
        match fault.and_then(|f| self.chaos.failure(Operation::Open, n, f)) {
            Some((error, _)) => Err(error.with_backend(backend.name())),
            None => {
                self.chaos.passed(Operation::Open);
                Ok(())
            }
        }
    }

    fn producer(&self, _backend: &dyn Backend, producer: Box<dyn Producer>) -> Box<dyn Producer> {
        Box::new(ChaosProducer {
            inner: Arc::from(producer),
            chaos: self.chaos.clone(),
        })
    }

    fn consumer(
        &self,
        _backend: &dyn Backend,
        _queue: &str,
        consumer: Box<dyn Consumer>,
    ) -> Box<dyn Consumer> {
        Box::new(ChaosConsumer {
            inner: consumer,
            chaos: self.chaos.clone(),
        })
    }

    fn transactional(
        &self,
        _backend: &dyn Backend,
        _queue: &str,
        unit: Box<dyn Transactional>,
    ) -> Box<dyn Transactional> {
        Box::new(ChaosUnit {
            inner: unit,
            chaos: self.chaos.clone(),
        })
    }
}

struct ChaosProducer {
    inner: Arc<dyn Producer>,
    chaos: Arc<Chaos>,
}

impl ChaosProducer {
    fn disturbs_sends(&self) -> bool {
        self.chaos.planned(Operation::Send) || self.chaos.planned(Operation::Confirm)
    }

    /// The confirm of a message handed over, as the plan has it.
    async fn confirm(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        let (n, fault) = self.chaos.next(Operation::Confirm);
        if let Some((error, keep)) =
            fault.and_then(|f| self.chaos.failure(Operation::Confirm, n, f))
        {
            let error = if keep {
                error.with_undelivered(message)
            } else {
                error
            };
            // The message never went out; the broker says so later, as a negative confirm.
            return Ok(PendingConfirm::waiting(async move { Err(error) }));
        }
        let confirm = self.inner.enqueue(destination, message).await?;
        let chaos = self.chaos.clone();
        Ok(PendingConfirm::waiting(async move {
            chaos.wait(Operation::Confirm, fault).await;
            chaos.note(Operation::Confirm, confirm.await)
        }))
    }
}

#[async_trait]
impl Producer for ChaosProducer {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        let (n, fault) = self.chaos.next(Operation::Send);
        if let Some((error, keep)) = fault.and_then(|f| self.chaos.failure(Operation::Send, n, f)) {
            return Err(if keep {
                error.with_undelivered(message)
            } else {
                error
            });
        }
        self.chaos.wait(Operation::Send, fault).await;
        let result = self.confirm(destination, message).await;
        self.chaos.note(Operation::Send, result)
    }

    async fn enqueue_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        pending: &mut Vec<Result<PendingConfirm>>,
    ) {
        if self.disturbs_sends() {
            pending.reserve(messages.len());
            for message in messages.drain(..) {
                pending.push(self.enqueue(destination, message).await);
            }
            return;
        }
        let count = messages.len() as u64;
        for op in [Operation::Send, Operation::Confirm] {
            self.chaos.saw(op, count);
        }
        self.inner
            .enqueue_batch(destination, messages, pending)
            .await;
    }

    async fn send(&self, destination: &Destination, message: Message) -> Result<Receipt> {
        if self.disturbs_sends() {
            return self.enqueue(destination, message).await?.await;
        }
        self.chaos.next(Operation::Send);
        self.chaos.next(Operation::Confirm);
        self.inner.send(destination, message).await
    }

    async fn send_batch(
        &self,
        destination: &Destination,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Receipt>>> {
        if self.disturbs_sends() {
            let mut results = Vec::with_capacity(messages.len());
            for message in messages {
                results.push(self.send(destination, message).await);
            }
            return Ok(results);
        }
        let count = messages.len() as u64;
        for op in [Operation::Send, Operation::Confirm] {
            self.chaos.saw(op, count);
        }
        self.inner.send_batch(destination, messages).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

struct ChaosConsumer {
    inner: Box<dyn Consumer>,
    chaos: Arc<Chaos>,
}

impl ChaosConsumer {
    fn received(&self, result: Result<Delivery>) -> Result<Delivery> {
        let delivery = self.chaos.note(Operation::Receive, result)?;
        let chaos = self.chaos.clone();
        Ok(wrap_settle(delivery, |inner, _| {
            Box::new(ChaosSettle { inner, chaos }) as Box<dyn Settle>
        }))
    }
}

#[async_trait]
impl Consumer for ChaosConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        let (n, fault) = self.chaos.next(Operation::Receive);
        if let Some((error, _)) = fault.and_then(|f| self.chaos.failure(Operation::Receive, n, f)) {
            return Err(error);
        }
        self.chaos.wait(Operation::Receive, fault).await;
        let result = self.inner.receive().await;
        self.received(result)
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        if self.chaos.planned(Operation::Receive) {
            return None;
        }
        let result = self.inner.try_receive()?;
        self.chaos.saw(Operation::Receive, 1);
        Some(self.received(result))
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

struct ChaosSettle {
    inner: Settlement,
    chaos: Arc<Chaos>,
}

impl ChaosSettle {
    /// The error that stops this settle, if the plan has one; it leaves the delivery
    /// unsettled, so it comes back.
    async fn disturb(&self, operation: Operation) -> Option<Error> {
        let (n, fault) = self.chaos.next(operation);
        if let Some((error, _)) = fault.and_then(|f| self.chaos.failure(operation, n, f)) {
            return Some(error);
        }
        self.chaos.wait(operation, fault).await;
        None
    }
}

#[async_trait]
impl Settle for ChaosSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        if let Some(error) = self.disturb(Operation::Ack).await {
            return Err(error);
        }
        let result = self.inner.ack().await;
        self.chaos.note(Operation::Ack, result)
    }

    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        if let Some(error) = self.disturb(Operation::Nack).await {
            return Err(error);
        }
        let result = self.inner.nack(nack).await;
        self.chaos.note(Operation::Nack, result)
    }

    fn abandon(self: Box<Self>) {
        drop(self.inner);
    }

    // No `try_ack`: a planned fault may make the ack wait, which only the boxed `ack` can do.
    // Inside it the backend's immediate ack is still taken (`Settlement::ack` tries it first).
}

struct ChaosUnit {
    inner: Box<dyn Transactional>,
    chaos: Arc<Chaos>,
}

#[async_trait]
impl Transactional for ChaosUnit {
    async fn receive(&mut self) -> Result<TransactionInput> {
        self.inner.receive().await
    }

    async fn receive_timeout(&mut self, timeout: Duration) -> Result<Option<TransactionInput>> {
        self.inner.receive_timeout(timeout).await
    }

    fn try_receive(&mut self) -> Option<Result<TransactionInput>> {
        self.inner.try_receive()
    }

    async fn send(&mut self, destination: &Destination, message: Message) -> Result<()> {
        self.inner.send(destination, message).await
    }

    fn pending(&self) -> TransactionCounts {
        self.inner.pending()
    }

    async fn commit(&mut self) -> Result<TransactionCounts> {
        let (n, fault) = self.chaos.next(Operation::Commit);
        if let Some((error, _)) = fault.and_then(|f| self.chaos.failure(Operation::Commit, n, f)) {
            if error.kind() == ErrorKind::Aborted {
                // An aborted commit leaves nothing open: outputs gone, inputs to come again.
                self.inner.abort().await?;
            }
            return Err(error);
        }
        self.chaos.wait(Operation::Commit, fault).await;
        let result = self.inner.commit().await;
        self.chaos.note(Operation::Commit, result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests;
