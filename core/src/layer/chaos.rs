//! Planned faults for tests: fail, delay or slow down the Nth operation of a kind, the same
//! way on every run of the same plan.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How many kinds of [`Operation`] there are.
const KINDS: usize = 7;

/// An operation a chaos plan can disturb. Each kind is counted on its own, from 1, across
/// everything the layered backend opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening a producer, consumer or transactional unit.
    Open,
    /// Handing a message to a producer (`enqueue`, `send`, and each message of a batch).
    Send,
    /// The broker's confirm of a message handed over.
    Confirm,
    /// Receiving a delivery.
    Receive,
    /// Acknowledging a delivery.
    Ack,
    /// Negatively acknowledging a delivery.
    Nack,
    /// Committing a transactional unit's transaction. A commit failed as `Aborted` rolls the
    /// transaction back first (its inputs come again), as a broker's abort does.
    Commit,
}

impl Operation {
    const ALL: [Operation; KINDS] = [
        Operation::Open,
        Operation::Send,
        Operation::Confirm,
        Operation::Receive,
        Operation::Ack,
        Operation::Nack,
        Operation::Commit,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            Operation::Open => "open",
            Operation::Send => "send",
            Operation::Confirm => "confirm",
            Operation::Receive => "receive",
            Operation::Ack => "ack",
            Operation::Nack => "nack",
            Operation::Commit => "commit",
        }
    }
}

/// What happens to an operation the plan picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// It fails with an error of this kind (temporary as the kind is by default), without
    /// reaching the backend; a failed send or confirm hands its message back in the error.
    Fail(ErrorKind),
    /// Like `Fail`, but a send or confirm loses its message: the error does not carry it (a
    /// backend that breaks its contract).
    FailLosingMessage(ErrorKind),
    /// The connection drops: a temporary `Connection` error, the message handed back; a settle
    /// that fails so leaves its delivery to come back.
    Disconnect,
    /// It takes this much longer (a receive or send waits first; a confirm comes later).
    Delay(Duration),
    /// Operations of this kind go one at a time, each taking this long: a slow broker.
    Throttle(Duration),
}

/// Which operations of a kind a rule picks, by their 1-based number.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum When {
    /// Only the Nth.
    Nth(u64),
    /// The first N.
    First(u64),
    /// Every Nth (N, 2N, ...).
    Every(u64),
    /// All of them.
    Always,
    /// Each with this probability (0 to 1), drawn from the plan's seed: the same plan picks
    /// the same operations on every run.
    Chance(f64),
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    operation: Operation,
    when: When,
    fault: Fault,
}

/// A plan of faults and the count of what it saw, shared by every part of a layered backend.
pub struct Chaos {
    seed: u64,
    rules: Vec<Rule>,
    seen: [AtomicU64; KINDS],
    passed: [AtomicU64; KINDS],
    lines: [tokio::sync::Mutex<()>; KINDS],
}

/// How many operations of each kind a chaos plan saw, and how many went through unharmed
/// and succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosCounts {
    /// Operations of the kind that started.
    pub seen: u64,
    /// Operations of the kind that reached the backend and succeeded.
    pub passed: u64,
}

impl Chaos {
    fn new(seed: u64) -> Self {
        Chaos {
            seed,
            rules: Vec::new(),
            seen: Default::default(),
            passed: Default::default(),
            lines: Default::default(),
        }
    }

    /// The counts of one kind of operation so far.
    pub fn counts(&self, operation: Operation) -> ChaosCounts {
        ChaosCounts {
            seen: self.seen[operation.index()].load(Ordering::SeqCst),
            passed: self.passed[operation.index()].load(Ordering::SeqCst),
        }
    }

    fn planned(&self, operation: Operation) -> bool {
        self.rules.iter().any(|r| r.operation == operation)
    }

    /// Number the next operation of this kind and say what happens to it.
    fn next(&self, operation: Operation) -> (u64, Option<Fault>) {
        let n = self.seen[operation.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let fault = self
            .rules
            .iter()
            .find(|r| r.operation == operation && self.picks(r.when, operation, n))
            .map(|r| r.fault);
        (n, fault)
    }

    fn picks(&self, when: When, operation: Operation, n: u64) -> bool {
        match when {
            When::Nth(k) => n == k,
            When::First(k) => n <= k,
            When::Every(k) => k > 0 && n % k == 0,
            When::Always => true,
            When::Chance(p) => {
                let draw = splitmix64(self.seed ^ ((operation.index() as u64) << 56) ^ n);
                ((draw >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        }
    }

    fn passed(&self, operation: Operation) {
        self.passed[operation.index()].fetch_add(1, Ordering::SeqCst);
    }

    /// Count a success of `operation`, passing the result through.
    fn note<T>(&self, operation: Operation, result: Result<T>) -> Result<T> {
        if result.is_ok() {
            self.passed(operation);
        }
        result
    }

    fn error(&self, operation: Operation, n: u64, kind: ErrorKind) -> Error {
        Error::new(
            kind,
            format!(
                "chaos: {} #{n} failed as planned (seed {})",
                operation.as_str(),
                self.seed
            ),
        )
        .with_operation(operation.as_str())
    }

    /// The error of a failing fault, `None` for a delay.
    fn failure(&self, operation: Operation, n: u64, fault: Fault) -> Option<(Error, bool)> {
        match fault {
            Fault::Fail(kind) => Some((self.error(operation, n, kind), true)),
            Fault::FailLosingMessage(kind) => Some((self.error(operation, n, kind), false)),
            Fault::Disconnect => Some((self.error(operation, n, ErrorKind::Connection), true)),
            Fault::Delay(_) | Fault::Throttle(_) => None,
        }
    }

    /// Wait as a delaying fault says.
    async fn wait(&self, operation: Operation, fault: Option<Fault>) {
        match fault {
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Throttle(d)) => {
                let _one_at_a_time = self.lines[operation.index()].lock().await;
                tokio::time::sleep(d).await;
            }
            _ => {}
        }
    }
}

impl fmt::Debug for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Chaos");
        d.field("seed", &self.seed).field("rules", &self.rules);
        for op in Operation::ALL {
            d.field(op.as_str(), &self.counts(op));
        }
        d.finish()
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

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
            self.chaos.seen[op.index()].fetch_add(count, Ordering::SeqCst);
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
            self.chaos.seen[op.index()].fetch_add(count, Ordering::SeqCst);
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
        self.chaos.seen[Operation::Receive.index()].fetch_add(1, Ordering::SeqCst);
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
