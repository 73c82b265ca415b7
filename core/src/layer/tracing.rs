//! Spans around sending, receiving and settling, named as OpenTelemetry's messaging conventions
//! name them, through the `tracing` crate (the application picks the subscriber or exporter).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tracing::field::Empty;
use tracing::{Instrument, Level, Span};

use super::{wrap_settle, Layer};
use crate::backend::Backend;
use crate::consumer::Consumer;
use crate::delivery::{Delivery, Nack, Settle, Settlement};
use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::producer::{Destination, PendingConfirm, Producer, Receipt};

/// Opens an `INFO` span around every send, receive and settle, with OpenTelemetry's
/// messaging attribute names: `messaging.system` (the backend's name),
/// `messaging.destination.name`, `messaging.operation.type` (`send`, `receive`, `settle`),
/// `messaging.operation.name` (the method), `messaging.message.id`,
/// `messaging.batch.message_count` for batches, and `error.type` (the error kind) when the
/// operation fails. A send's span lasts until its confirm.
///
/// Spans are named after the operation type; a subscriber that exports to OpenTelemetry (for
/// instance through `tracing-opentelemetry`) maps the fields as they are. While no subscriber
/// wants these spans, the layer costs a check per operation and wraps nothing per message.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer;

impl TracingLayer {
    /// The layer.
    pub fn new() -> Self {
        TracingLayer
    }
}

impl Layer for TracingLayer {
    fn name(&self) -> &'static str {
        "tracing"
    }

    fn producer(&self, backend: &dyn Backend, producer: Box<dyn Producer>) -> Box<dyn Producer> {
        Box::new(TracedProducer {
            inner: producer,
            system: backend.name(),
        })
    }

    fn consumer(
        &self,
        backend: &dyn Backend,
        queue: &str,
        consumer: Box<dyn Consumer>,
    ) -> Box<dyn Consumer> {
        Box::new(TracedConsumer {
            inner: consumer,
            system: backend.name(),
            queue: queue.into(),
        })
    }
}

fn send_span(system: &'static str, destination: &Destination, operation: &'static str) -> Span {
    tracing::info_span!(
        "send",
        otel.kind = "producer",
        messaging.system = system,
        messaging.destination.name = destination.name(),
        messaging.operation.type = "send",
        messaging.operation.name = operation,
        messaging.message.id = Empty,
        messaging.batch.message_count = Empty,
        error.type = Empty,
    )
}

fn receive_span(system: &'static str, queue: &str, operation: &'static str) -> Span {
    tracing::info_span!(
        "receive",
        otel.kind = "consumer",
        messaging.system = system,
        messaging.destination.name = queue,
        messaging.operation.type = "receive",
        messaging.operation.name = operation,
        messaging.message.id = Empty,
        error.type = Empty,
    )
}

/// Note a failure on the span.
fn record<T>(span: &Span, result: &Result<T>) {
    if let Err(e) = result {
        span.record("error.type", e.kind().as_str());
    }
}

/// Run `operation` inside `span`, noting its failure.
async fn traced<T>(span: Span, operation: impl Future<Output = Result<T>>) -> Result<T> {
    let result = operation.instrument(span.clone()).await;
    record(&span, &result);
    result
}

struct TracedProducer {
    inner: Box<dyn Producer>,
    system: &'static str,
}

impl TracedProducer {
    /// The confirm, followed to its end inside `span` when it is still to come.
    fn follow(span: Span, result: Result<PendingConfirm>) -> Result<PendingConfirm> {
        let mut confirm = match result {
            Ok(confirm) => confirm,
            Err(e) => {
                span.record("error.type", e.kind().as_str());
                return Err(e);
            }
        };
        match confirm.take_if_ready() {
            Some(known) => {
                record(&span, &known);
                Ok(PendingConfirm::ready(known))
            }
            None => Ok(PendingConfirm::waiting(traced(span, confirm))),
        }
    }
}

// While no subscriber wants the span, each method hands back the backend's own future as it
// is: no wrapping future, no allocation (the signatures are those `async_trait` gives the trait).
impl Producer for TracedProducer {
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
        let span = send_span(self.system, destination, "enqueue");
        if span.is_disabled() {
            return self.inner.enqueue(destination, message);
        }
        span.record(
            "messaging.message.id",
            tracing::field::display(message.id()),
        );
        Box::pin(async move {
            let result = self
                .inner
                .enqueue(destination, message)
                .instrument(span.clone())
                .await;
            Self::follow(span, result)
        })
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
        let span = send_span(self.system, destination, "enqueue_batch");
        if span.is_disabled() {
            return self.inner.enqueue_batch(destination, messages, pending);
        }
        span.record("messaging.batch.message_count", messages.len());
        Box::pin(
            self.inner
                .enqueue_batch(destination, messages, pending)
                .instrument(span),
        )
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
        let span = send_span(self.system, destination, "send");
        if span.is_disabled() {
            return self.inner.send(destination, message);
        }
        span.record(
            "messaging.message.id",
            tracing::field::display(message.id()),
        );
        Box::pin(traced(span, self.inner.send(destination, message)))
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
        let span = send_span(self.system, destination, "send_batch");
        if span.is_disabled() {
            return self.inner.send_batch(destination, messages);
        }
        span.record("messaging.batch.message_count", messages.len());
        Box::pin(traced(span, self.inner.send_batch(destination, messages)))
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

struct TracedConsumer {
    inner: Box<dyn Consumer>,
    system: &'static str,
    queue: Box<str>,
}

impl TracedConsumer {
    /// Note the delivery on the span, and trace its settle when anyone listens.
    fn received(&self, span: &Span, delivery: Delivery) -> Delivery {
        span.record(
            "messaging.message.id",
            tracing::field::display(delivery.message().id()),
        );
        if !tracing::enabled!(Level::INFO) {
            return delivery;
        }
        let (system, id) = (self.system, delivery.message().id().clone());
        wrap_settle(delivery, |inner, info| {
            Box::new(TracedSettle {
                inner,
                system,
                queue: info.source.clone(),
                id,
            }) as Box<dyn Settle>
        })
    }

    fn finish(&self, span: &Span, result: Result<Delivery>) -> Result<Delivery> {
        match result {
            Ok(delivery) => Ok(self.received(span, delivery)),
            Err(e) => {
                span.record("error.type", e.kind().as_str());
                Err(e)
            }
        }
    }
}

impl Consumer for TracedConsumer {
    fn receive<'a, 'f>(&'a mut self) -> BoxFuture<'f, Result<Delivery>>
    where
        'a: 'f,
        Self: 'f,
    {
        let span = receive_span(self.system, &self.queue, "receive");
        if span.is_disabled() {
            return self.inner.receive();
        }
        Box::pin(async move {
            let result = self.inner.receive().instrument(span.clone()).await;
            self.finish(&span, result)
        })
    }

    fn receive_timeout<'a, 'f>(
        &'a mut self,
        timeout: Duration,
    ) -> BoxFuture<'f, Result<Option<Delivery>>>
    where
        'a: 'f,
        Self: 'f,
    {
        let span = receive_span(self.system, &self.queue, "receive_timeout");
        if span.is_disabled() {
            return self.inner.receive_timeout(timeout);
        }
        Box::pin(async move {
            let result = self
                .inner
                .receive_timeout(timeout)
                .instrument(span.clone())
                .await;
            match result {
                Ok(Some(delivery)) => Ok(Some(self.received(&span, delivery))),
                Ok(None) => Ok(None),
                Err(e) => {
                    span.record("error.type", e.kind().as_str());
                    Err(e)
                }
            }
        })
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        // A span only for what arrived: polling an empty queue is not an operation.
        let result = self.inner.try_receive()?;
        let span = receive_span(self.system, &self.queue, "try_receive");
        if span.is_disabled() {
            return Some(result);
        }
        Some(self.finish(&span, result))
    }

    fn close<'a, 'f>(&'a mut self) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        Self: 'f,
    {
        self.inner.close()
    }
}

struct TracedSettle {
    inner: Settlement,
    system: &'static str,
    queue: String,
    id: MessageId,
}

impl TracedSettle {
    fn span(&self, operation: &'static str) -> Span {
        tracing::info_span!(
            "settle",
            otel.kind = "consumer",
            messaging.system = self.system,
            messaging.destination.name = self.queue.as_str(),
            messaging.operation.type = "settle",
            messaging.operation.name = operation,
            messaging.message.id = %self.id,
            error.type = Empty,
        )
    }
}

#[async_trait]
impl Settle for TracedSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        let span = self.span("ack");
        traced(span, self.inner.ack()).await
    }

    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        let span = self.span(match nack {
            Nack::Requeue { .. } => "nack_requeue",
            Nack::DeadLetter { .. } => "nack_dead_letter",
        });
        traced(span, self.inner.nack(nack)).await
    }

    fn abandon(self: Box<Self>) {
        drop(self.inner);
    }
}

#[cfg(test)]
mod tests;
