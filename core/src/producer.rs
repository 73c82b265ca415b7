//! Sending: a destination, the producer trait, and the confirm a send resolves to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::error::Result;
use crate::guarantee::DeliveryGuarantee;
use crate::message::{Message, MessageId};

/// Where a producer sends: straight to a queue, or to an exchange with a routing key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A queue (Kafka: a topic; SQS: a queue; AMQP: the default exchange).
    Queue(Arc<str>),
    /// An exchange and the routing key its bindings are matched against.
    Exchange {
        /// The exchange.
        name: Arc<str>,
        /// The routing key (ignored by fanout and headers exchanges).
        routing_key: Arc<str>,
    },
}

impl Destination {
    /// Send straight to a queue.
    pub fn queue(name: impl AsRef<str>) -> Self {
        Destination::Queue(Arc::from(name.as_ref()))
    }

    /// Send to an exchange with a routing key.
    pub fn exchange(name: impl AsRef<str>, routing_key: impl AsRef<str>) -> Self {
        Destination::Exchange {
            name: Arc::from(name.as_ref()),
            routing_key: Arc::from(routing_key.as_ref()),
        }
    }

    /// The queue or exchange name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) => n,
            Destination::Exchange { name, .. } => name,
        }
    }

    /// Parse the CLI form: `queue` or `exchange:routing.key` (`exchange:` for an empty key).
    pub fn parse(text: &str) -> Result<Self> {
        let dest = match text.split_once(':') {
            Some((exchange, key)) => Destination::exchange(exchange, key),
            None => Destination::queue(text),
        };
        crate::topology::validate_name("destination", dest.name())?;
        Ok(dest)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Queue(n) => write!(f, "queue '{n}'"),
            Destination::Exchange { name, routing_key } => {
                write!(f, "exchange '{name}' (routing key '{routing_key}')")
            }
        }
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a producer is opened ([`Backend::producer_with`](crate::Backend::producer_with)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerOptions {
    /// How much a send waits to hear from the broker; the backend's configured level (the URL's
    /// `?guarantee=`, itself [`DeliveryGuarantee::Confirmed`] unless set) when `None`. A level the
    /// backend does not offer is refused with `Unsupported` when the producer is opened.
    pub guarantee: Option<DeliveryGuarantee>,
}

impl ProducerOptions {
    /// Open the producer with this delivery guarantee.
    pub fn guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.guarantee = Some(guarantee);
        self
    }
}

/// What the producer knows of a message once its send is done.
///
/// What it vouches for depends on the producer's [`DeliveryGuarantee`]: under `Confirmed` the
/// broker has the message (see [`Producer`]); under `LeaderConfirmed` the partition leader wrote
/// it at `offset` and its replicas may not have it yet; under `Unconfirmed` only the client wrote
/// it to its connection, so the receipt carries the id (and Kafka's partition) but no offset,
/// and does not say the broker has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The id of the confirmed message.
    pub id: MessageId,
    /// The partition it was written to, where the broker partitions.
    pub partition: Option<i32>,
    /// Its offset, where the broker has offsets.
    pub offset: Option<i64>,
}

impl Receipt {
    /// A receipt with only the id (brokers without partitions).
    pub fn new(id: MessageId) -> Self {
        Receipt {
            id,
            partition: None,
            offset: None,
        }
    }
}

/// A send that the producer has accepted and the broker has yet to confirm.
///
/// Await it for the [`Receipt`]. Holding many of these at once is how one task pipelines sends;
/// dropping one does not cancel the send, it only discards the news of its confirm.
#[must_use = "a pending confirm tells whether the broker took the message"]
pub struct PendingConfirm(ConfirmState);

enum ConfirmState {
    Ready(Option<Result<Receipt>>),
    Waiting(BoxFuture<'static, Result<Receipt>>),
}

impl PendingConfirm {
    /// A confirm that is already known (a broker that confirms synchronously).
    pub fn ready(result: Result<Receipt>) -> Self {
        PendingConfirm(ConfirmState::Ready(Some(result)))
    }

    /// The confirm, if it is already known (a broker that confirms synchronously), without
    /// polling; `None` when it is still to come or was already taken.
    pub fn take_if_ready(&mut self) -> Option<Result<Receipt>> {
        match &mut self.0 {
            ConfirmState::Ready(result) => result.take(),
            ConfirmState::Waiting(_) => None,
        }
    }

    /// A confirm that resolves later.
    pub fn waiting(future: impl Future<Output = Result<Receipt>> + Send + 'static) -> Self {
        PendingConfirm(ConfirmState::Waiting(Box::pin(future)))
    }
}

impl Future for PendingConfirm {
    type Output = Result<Receipt>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            ConfirmState::Ready(result) => match result.take() {
                Some(r) => Poll::Ready(r),
                None => Poll::Ready(Err(crate::Error::new(
                    crate::ErrorKind::AlreadySettled,
                    "pending confirm polled after it completed",
                ))),
            },
            ConfirmState::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for PendingConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingConfirm")
    }
}

/// What [`Producer::try_enqueue`] did.
#[must_use = "a message handed back was not sent: enqueue it"]
pub enum TryEnqueue {
    /// Taken (or refused) without waiting: what [`Producer::enqueue`] would have resolved to.
    Done(Result<PendingConfirm>),
    /// Taking it would have to wait, or the producer has no path that does not: the message,
    /// unsent and unchanged, for [`Producer::enqueue`].
    Wait(Message),
}

impl fmt::Debug for TryEnqueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryEnqueue::Done(result) => f.debug_tuple("Done").field(result).finish(),
            TryEnqueue::Wait(message) => f.debug_tuple("Wait").field(message.id()).finish(),
        }
    }
}

/// Sends messages and learns when the broker has taken them.
///
/// **Confirmed** means the broker has taken responsibility for the message: it is in every queue
/// it routes to (memory), the broker sent a publisher confirm (RabbitMQ), the delivery report
/// arrived with the configured `acks` (Kafka), or the API call returned success (SQS). After a
/// confirm the message survives whatever the broker's persistence promises
/// ([`Capabilities::persistence`](crate::Capabilities)); before it, the producer still owns it and
/// a failure returns it inside the error ([`Error::undelivered`](crate::Error::undelivered)).
///
/// That is the default [`DeliveryGuarantee::Confirmed`]. A producer opened with a weaker level
/// ([`Backend::producer_with`](crate::Backend::producer_with), or the URL's `?guarantee=`)
/// resolves its confirms sooner and vouches for less: see [`DeliveryGuarantee`] and
/// [`Receipt`].
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Producer: Send + Sync {
    /// Hand a message to the producer. Resolves once it is accepted into the producer's bounded
    /// in-flight window (this is where backpressure waits), returning the pending confirm.
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm>;

    /// Hand a message over without waiting, where the producer can take it at once:
    /// [`TryEnqueue::Done`] with what `enqueue` would have resolved to, or [`TryEnqueue::Wait`]
    /// with the message back, unchanged, when taking it would wait (a full in-flight window, a
    /// route to resolve) — then `enqueue` it.
    ///
    /// For a caller that sends one message at a time as fast as it can (a tight producer loop,
    /// a benchmark): it spares the boxed future `enqueue` costs per message. The default never
    /// takes a message at once; a backend whose send is synchronous anyway (memory) overrides it.
    fn try_enqueue(&self, destination: &Destination, message: Message) -> TryEnqueue {
        let _ = destination;
        TryEnqueue::Wait(message)
    }

    /// Hand several messages to the producer, in order: drains `messages` and appends one
    /// result per message to `pending`, as `enqueue` gives it. Both vectors keep their
    /// capacity, so a caller that sends batch after batch allocates nothing per batch. A
    /// message refused does not stop the ones after it (each comes back inside its own
    /// error), so a caller that retries a refused message sends it after them.
    ///
    /// The default enqueues one by one; a backend that can take many messages for the price of
    /// one (one lock, one call) overrides it. Pipelines hand their sinks whatever is ready
    /// through this.
    async fn enqueue_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        pending: &mut Vec<Result<PendingConfirm>>,
    ) {
        pending.reserve(messages.len());
        for message in messages.drain(..) {
            pending.push(self.enqueue(destination, message).await);
        }
    }

    /// Send one message and wait for the broker's confirm.
    async fn send(&self, destination: &Destination, message: Message) -> Result<Receipt> {
        self.enqueue(destination, message).await?.await
    }

    /// Send many messages, pipelined (and batched where the broker has batch calls).
    /// The result has one entry per message, in order.
    ///
    /// The default goes through `enqueue_batch`, so a backend's batch path (one lock, one
    /// call) serves it too: a batch API slower than the loop it replaces would be no use.
    async fn send_batch(
        &self,
        destination: &Destination,
        mut messages: Vec<Message>,
    ) -> Result<Vec<Result<Receipt>>> {
        let mut pending = Vec::with_capacity(messages.len());
        self.enqueue_batch(destination, &mut messages, &mut pending)
            .await;
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            });
        }
        Ok(results)
    }

    /// Wait until everything enqueued so far is confirmed or has failed.
    async fn flush(&self) -> Result<()>;

    /// Flush, then release the producer; later sends fail with `Closed`.
    async fn close(&self) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts which enqueue path the default `send_batch` takes.
    #[derive(Default)]
    struct CountingProducer {
        single: AtomicUsize,
        batches: AtomicUsize,
    }

    #[async_trait]
    impl Producer for CountingProducer {
        async fn enqueue(&self, _: &Destination, message: Message) -> Result<PendingConfirm> {
            self.single.fetch_add(1, Ordering::Relaxed);
            Ok(PendingConfirm::ready(Ok(Receipt::new(
                message.id().clone(),
            ))))
        }

        async fn enqueue_batch(
            &self,
            _: &Destination,
            messages: &mut Vec<Message>,
            pending: &mut Vec<Result<PendingConfirm>>,
        ) {
            self.batches.fetch_add(1, Ordering::Relaxed);
            for message in messages.drain(..) {
                pending.push(Ok(PendingConfirm::ready(Ok(Receipt::new(
                    message.id().clone(),
                )))));
            }
        }

        async fn flush(&self) -> Result<()> {
            Ok(())
        }

        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    /// A batch API slower than the loop it replaces is no use: the default `send_batch` must
    /// take the backend's `enqueue_batch` (one lock, one call), not enqueue one by one.
    #[tokio::test]
    async fn send_batch_takes_the_enqueue_batch_path_and_keeps_order() {
        let producer = CountingProducer::default();
        let messages: Vec<Message> = (0..5).map(|i| Message::new(format!("m{i}"))).collect();
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id().clone()).collect();
        let results = producer
            .send_batch(&Destination::queue("q"), messages)
            .await
            .expect("batch");
        let receipts: Vec<MessageId> = results
            .into_iter()
            .map(|r| r.expect("confirmed").id)
            .collect();
        assert_eq!(receipts, ids, "one receipt per message, in order");
        assert_eq!(producer.batches.load(Ordering::Relaxed), 1);
        assert_eq!(producer.single.load(Ordering::Relaxed), 0);
    }

    /// A producer without a synchronous path must not lose or alter the message it declines.
    #[test]
    fn try_enqueue_by_default_hands_the_message_back_untouched() {
        let producer = CountingProducer::default();
        let message = Message::builder("body").key("k").build().expect("message");
        let id = message.id().clone();
        let TryEnqueue::Wait(back) = producer.try_enqueue(&Destination::queue("q"), message) else {
            panic!("the default try_enqueue took a message it has no synchronous path for");
        };
        assert_eq!(back.id(), &id);
        assert_eq!(back.payload().as_ref(), b"body");
        assert_eq!(back.key(), Some("k"));
        assert_eq!(
            producer.single.load(Ordering::Relaxed),
            0,
            "nothing was sent"
        );
    }
}
