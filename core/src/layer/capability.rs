//! The capability check: what a backend declares it lacks is refused before it reaches it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::{wrap_settle, Layer, Open};
use crate::backend::Backend;
use crate::capabilities::{Capabilities, Capability};
use crate::consumer::Consumer;
use crate::delivery::{Delivery, Nack, Settle, Settlement};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::{Destination, PendingConfirm, Producer, Receipt, TryEnqueue};
use crate::topology::{Binding, ExchangeKind, ExchangeSpec, QueueSpec, Route, Topology};
use crate::transaction::{TransactionCounts, TransactionInput, Transactional};

/// Refuses, with an [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) error naming the
/// capability, every operation the backend's [`Capabilities`] say it lacks, and every message
/// over its declared limits (size, header count, delay), before the backend sees it. A refused
/// send returns its message inside the error.
///
/// [`Registry::connect`](crate::Registry::connect) applies it to every backend. It checks:
/// opening a consumer with `replay`; opening a transactional unit; opening a producer with a
/// delivery guarantee the backend does not offer; a send's message limits and
/// delay, and a send to an exchange on a backend without exchanges (producers and transactional
/// units); a nack that asks for a delay (the delivery is then left unsettled, to come back);
/// declaring an exchange of a kind, a queue with a dead-letter queue, delivery-attempt bound,
/// length bound or TTL; and a binding on a backend without exchanges. Declarations are
/// validated first (`InvalidInput`), as the backends do.
///
/// Parts with nothing to check are not wrapped: a backend with delayed delivery, or whose
/// settle handles refuse a delayed nack themselves
/// ([`Backend::settle_refuses_unsupported`]), keeps its consumers and settle handles as they
/// are, so deliveries cost nothing more; a backend whose producers refuse what it cannot send
/// themselves ([`Backend::producer_refuses_unsupported`]) keeps its producers as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapabilityLayer;

impl CapabilityLayer {
    /// The layer.
    pub fn new() -> Self {
        CapabilityLayer
    }
}

/// What one backend allows, kept by each wrapper so checks read no shared state.
#[derive(Clone)]
struct Rules {
    backend: &'static str,
    caps: Capabilities,
}

impl Rules {
    fn of(backend: &dyn Backend) -> Self {
        Rules {
            backend: backend.name(),
            caps: backend.capabilities().clone(),
        }
    }

    fn require(&self, capability: Capability, operation: &'static str) -> Result<()> {
        self.caps.require(capability, self.backend, operation)
    }

    fn has_exchanges(&self) -> bool {
        ExchangeKind::ALL
            .iter()
            .any(|kind| self.caps.supports(Capability::Exchange(*kind)))
    }

    /// Whether any message could fail `check_send`; when none can, producers are not wrapped.
    fn limits_sends(&self) -> bool {
        let c = &self.caps;
        c.max_message_size.is_some()
            || c.max_headers.is_some()
            || !c.delayed_delivery
            || c.max_delay.is_some()
            || !self.has_exchanges()
    }

    fn check_send(&self, destination: &Destination, message: &Message) -> Result<()> {
        if matches!(destination, Destination::Exchange { .. }) && !self.has_exchanges() {
            self.require(Capability::Exchange(ExchangeKind::Direct), "send")?;
        }
        self.caps.check_message(message, self.backend, "send")
    }

    fn check_nack(&self, nack: &Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay: Some(_) } => self.require(Capability::DelayedDelivery, "nack"),
            _ => Ok(()),
        }
    }

    fn context(&self, error: Error, operation: &'static str) -> Error {
        error.with_backend(self.backend).with_operation(operation)
    }
}

impl Layer for CapabilityLayer {
    fn name(&self) -> &'static str {
        "capability"
    }

    fn admit(&self, backend: &dyn Backend, open: Open<'_>) -> Result<()> {
        let caps = backend.capabilities();
        match open {
            Open::Consumer { options, .. } if options.replay.is_some() => {
                caps.require(Capability::Replay, backend.name(), "consume")
            }
            Open::Transactional { .. } => {
                caps.require(Capability::Transactions, backend.name(), "transactional")
            }
            Open::Producer { options } => match options.guarantee {
                Some(level) => caps.delivery_guarantees.require(
                    level,
                    backend.name(),
                    crate::operation::PRODUCER,
                ),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn producer(&self, backend: &dyn Backend, producer: Box<dyn Producer>) -> Box<dyn Producer> {
        // A backend that refuses such sends itself needs no second check.
        if backend.producer_refuses_unsupported() {
            return producer;
        }
        let rules = Rules::of(backend);
        if !rules.limits_sends() {
            return producer;
        }
        Box::new(CheckedProducer {
            inner: producer,
            rules,
        })
    }

    fn consumer(
        &self,
        backend: &dyn Backend,
        _queue: &str,
        consumer: Box<dyn Consumer>,
    ) -> Box<dyn Consumer> {
        // Only a delayed nack can be refused at settle time, and a backend that refuses it
        // itself needs no second check.
        if backend.capabilities().delayed_delivery || backend.settle_refuses_unsupported() {
            return consumer;
        }
        Box::new(CheckedConsumer {
            inner: consumer,
            rules: Arc::new(Rules::of(backend)),
        })
    }

    fn topology(&self, backend: &dyn Backend, topology: Box<dyn Topology>) -> Box<dyn Topology> {
        Box::new(CheckedTopology {
            inner: topology,
            rules: Rules::of(backend),
        })
    }

    fn transactional(
        &self,
        backend: &dyn Backend,
        _queue: &str,
        unit: Box<dyn Transactional>,
    ) -> Box<dyn Transactional> {
        let rules = Rules::of(backend);
        if !rules.limits_sends() {
            return unit;
        }
        Box::new(CheckedUnit { inner: unit, rules })
    }
}

struct CheckedProducer {
    inner: Box<dyn Producer>,
    rules: Rules,
}

// The checks are synchronous, so a message that passes goes on with the backend's own future:
// these methods return it as it is instead of wrapping it in one of their own, which would cost
// an allocation per message (the signatures are those `async_trait` gives the trait).
impl Producer for CheckedProducer {
    fn enqueue<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        message: Message,
    ) -> BoxFuture<'f, Result<PendingConfirm>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        if let Err(e) = self.rules.check_send(destination, &message) {
            return Box::pin(std::future::ready(Err(e.with_undelivered(message))));
        }
        self.inner.enqueue(destination, message)
    }

    fn try_enqueue(&self, destination: &Destination, message: Message) -> TryEnqueue {
        if let Err(e) = self.rules.check_send(destination, &message) {
            return TryEnqueue::Done(Err(e.with_undelivered(message)));
        }
        self.inner.try_enqueue(destination, message)
    }

    fn enqueue_batch<'a, 'b, 'c, 'd, 'f>(
        &'a self,
        destination: &'b Destination,
        messages: &'c mut Vec<Message>,
        pending: &'d mut Vec<Result<PendingConfirm>>,
    ) -> BoxFuture<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        'd: 'f,
        Self: 'f,
    {
        if messages
            .iter()
            .all(|m| self.rules.check_send(destination, m).is_ok())
        {
            return self.inner.enqueue_batch(destination, messages, pending);
        }
        // A refused message keeps its place among the results: the rest go one by one.
        Box::pin(async move {
            pending.reserve(messages.len());
            for message in messages.drain(..) {
                pending.push(self.enqueue(destination, message).await);
            }
        })
    }

    fn send<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        message: Message,
    ) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        if let Err(e) = self.rules.check_send(destination, &message) {
            return Box::pin(std::future::ready(Err(e.with_undelivered(message))));
        }
        self.inner.send(destination, message)
    }

    fn send_batch<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        messages: Vec<Message>,
    ) -> BoxFuture<'f, Result<Vec<Result<Receipt>>>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        if messages
            .iter()
            .all(|m| self.rules.check_send(destination, m).is_ok())
        {
            return self.inner.send_batch(destination, messages);
        }
        Box::pin(self.send_batch_refusing(destination, messages))
    }

    fn flush<'a, 'f>(&'a self) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        Self: 'f,
    {
        self.inner.flush()
    }

    fn close<'a, 'f>(&'a self) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        Self: 'f,
    {
        self.inner.close()
    }
}

impl CheckedProducer {
    /// A batch with refused messages: the rest go to the backend as one batch, and every
    /// message's result keeps its place.
    async fn send_batch_refusing(
        &self,
        destination: &Destination,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Receipt>>> {
        let total = messages.len();
        let mut accepted = Vec::with_capacity(total);
        // `None` where the message went to the backend, the refusal where it did not.
        let mut refusals = Vec::with_capacity(total);
        for message in messages {
            match self.rules.check_send(destination, &message) {
                Ok(()) => {
                    accepted.push(message);
                    refusals.push(None);
                }
                Err(e) => refusals.push(Some(e.with_undelivered(message))),
            }
        }
        let mut sent = self
            .inner
            .send_batch(destination, accepted)
            .await?
            .into_iter();
        let mut results = Vec::with_capacity(total);
        for refusal in refusals {
            match refusal {
                Some(e) => results.push(Err(e)),
                None => results.extend(sent.next()),
            }
        }
        Ok(results)
    }
}

struct CheckedConsumer {
    inner: Box<dyn Consumer>,
    /// Shared with every settle handle it wraps: cloning the capabilities per delivery cost
    /// an allocation per message (their client-side list).
    rules: Arc<Rules>,
}

impl CheckedConsumer {
    fn wrap(&self, delivery: Delivery) -> Delivery {
        let rules = self.rules.clone();
        wrap_settle(delivery, |inner, _| {
            Box::new(CheckedSettle { inner, rules }) as Box<dyn Settle>
        })
    }
}

#[async_trait]
impl Consumer for CheckedConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        let delivery = self.inner.receive().await?;
        Ok(self.wrap(delivery))
    }

    async fn receive_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>> {
        let delivery = self.inner.receive_timeout(timeout).await?;
        Ok(delivery.map(|d| self.wrap(d)))
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        let delivery = self.inner.try_receive()?;
        Some(delivery.map(|d| self.wrap(d)))
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

struct CheckedSettle {
    inner: Settlement,
    rules: Arc<Rules>,
}

#[async_trait]
impl Settle for CheckedSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.inner.ack().await
    }

    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        // Refused, the delivery stays unsettled: dropping `inner` gives it back to be received
        // again, as a backend refusing the nack itself does.
        self.rules.check_nack(&nack)?;
        self.inner.nack(nack).await
    }

    fn abandon(self: Box<Self>) {
        drop(self.inner);
    }

    // An ack is never refused: the backend's immediate ack goes through as it is.
    fn try_ack(&mut self) -> Option<Result<()>> {
        self.inner.ack_now()
    }
}

struct CheckedTopology {
    inner: Box<dyn Topology>,
    rules: Rules,
}

#[async_trait]
impl Topology for CheckedTopology {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        let op = "declare_exchange";
        spec.validate().map_err(|e| self.rules.context(e, op))?;
        self.rules.require(Capability::Exchange(spec.kind), op)?;
        self.inner.declare_exchange(spec).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.inner.delete_exchange(name).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()> {
        let op = "declare_queue";
        spec.validate().map_err(|e| self.rules.context(e, op))?;
        let wanted = [
            (spec.dead_letter_queue.is_some(), Capability::DeadLetter),
            (
                spec.max_delivery_attempts.is_some(),
                Capability::MaxDeliveryAttempts,
            ),
            (spec.max_length.is_some(), Capability::MaxQueueLength),
            (spec.message_ttl.is_some(), Capability::MessageTtl),
        ];
        for (asked, capability) in wanted {
            if asked {
                self.rules.require(capability, op)?;
            }
        }
        self.inner.declare_queue(spec).await
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.inner.delete_queue(name).await
    }

    async fn bind(&self, binding: &Binding) -> Result<()> {
        let op = "bind";
        binding.validate().map_err(|e| self.rules.context(e, op))?;
        if !self.rules.has_exchanges() {
            let kind = match binding.route {
                Route::Key(_) => ExchangeKind::Direct,
                Route::Pattern(_) => ExchangeKind::Topic,
                Route::All => ExchangeKind::Fanout,
                Route::Headers { .. } => ExchangeKind::Headers,
            };
            self.rules.require(Capability::Exchange(kind), op)?;
        }
        self.inner.bind(binding).await
    }

    async fn unbind(&self, binding: &Binding) -> Result<()> {
        self.inner.unbind(binding).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        self.inner.queue_depth(queue).await
    }
}

struct CheckedUnit {
    inner: Box<dyn Transactional>,
    rules: Rules,
}

#[async_trait]
impl Transactional for CheckedUnit {
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
        if let Err(e) = self.rules.check_send(destination, &message) {
            return Err(e.with_undelivered(message));
        }
        self.inner.send(destination, message).await
    }

    fn pending(&self) -> TransactionCounts {
        self.inner.pending()
    }

    async fn commit(&mut self) -> Result<TransactionCounts> {
        self.inner.commit().await
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
