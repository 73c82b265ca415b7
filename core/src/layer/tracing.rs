//! Spans around sending, receiving and settling, named as OpenTelemetry's messaging conventions
//! name them, through the `tracing` crate (the application picks the subscriber or exporter),
//! and the W3C trace context carried in the headers from a send to its receives.

use std::future::Future;
use std::sync::Arc;
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
use crate::trace_context::TraceContext;

/// Opens an `INFO` span around every send, receive and settle, following OpenTelemetry's
/// messaging conventions, and carries the W3C trace context in the message headers.
///
/// | span | `otel.kind` | `otel.name` | attributes besides `messaging.system`, `messaging.destination.name`, `messaging.operation.type` / `.name` |
/// |---|---|---|---|
/// | `send` | producer | `send {destination}` | `messaging.message.id`, `messaging.batch.message_count` (batches), `messaging.rabbitmq.destination.routing_key` (exchanges) |
/// | `receive` | client | `receive {queue}` | `messaging.message.id`, `messaging.destination.partition.id`, `messaging.kafka.offset`, `messaging.consumer.group.name` (Kafka), `messaging.rabbitmq.destination.routing_key` (RabbitMQ) |
/// | `process` ([`process_span`], opened by the processors) | consumer | `process {queue}` | the same as `receive` |
/// | `settle` | client | `ack {queue}`, `nack_requeue {queue}`, ... | `messaging.message.id` |
///
/// Failures add `error.type` (the error kind). A send's span lasts until its confirm.
///
/// **Context.** A send writes `traceparent` (and `tracestate`) into the message: the send
/// span's own ids with the `otel` feature, else a child of the context current then (see
/// [`TraceContext`]). A receive reads them: the message's context becomes the parent of its
/// receive and settle spans, and of the process span, so a message bridged from one broker to
/// another keeps one trace.
///
/// **Cost.** While no subscriber wants these spans, the layer costs a check and a
/// thread-local read per operation and wraps nothing; a message keeps its headers as they are,
/// unless a context is current (a processor sending an input's outputs), which is then passed
/// on.
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
    let span = tracing::info_span!(
        "send",
        otel.name = Empty,
        otel.kind = "producer",
        messaging.system = system,
        messaging.destination.name = destination.name(),
        messaging.operation.type = "send",
        messaging.operation.name = operation,
        messaging.message.id = Empty,
        messaging.batch.message_count = Empty,
        messaging.rabbitmq.destination.routing_key = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.record(
            "otel.name",
            tracing::field::display(format_args!("send {}", destination.name())),
        );
        if let Destination::Exchange { routing_key, .. } = destination {
            span.record("messaging.rabbitmq.destination.routing_key", &**routing_key);
        }
    }
    span
}

fn receive_span(system: &'static str, queue: &str, operation: &'static str) -> Span {
    let span = tracing::info_span!(
        "receive",
        otel.name = Empty,
        otel.kind = "client",
        messaging.system = system,
        messaging.destination.name = queue,
        messaging.operation.type = "receive",
        messaging.operation.name = operation,
        messaging.message.id = Empty,
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        messaging.consumer.group.name = Empty,
        messaging.rabbitmq.destination.routing_key = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.record(
            "otel.name",
            tracing::field::display(format_args!("receive {queue}")),
        );
    }
    span
}

/// The span of processing one delivery (a processor transforming it and sending what it made):
/// the child of the context the message carries, so the outputs sent inside it carry the same
/// trace. Callers keep it open until the delivery is settled, and run the work inside it and
/// inside [`TraceContext::in_scope`] of the delivery's context (see `mailroom-processors`).
pub fn process_span(delivery: &Delivery) -> Span {
    let info = delivery.info();
    let span = tracing::info_span!(
        "process",
        otel.name = Empty,
        otel.kind = "consumer",
        messaging.destination.name = &*info.source,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = Empty,
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        messaging.consumer.group.name = Empty,
        messaging.rabbitmq.destination.routing_key = Empty,
        error.type = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record(
        "otel.name",
        tracing::field::display(format_args!("process {}", info.source)),
    );
    note_delivery(&span, delivery);
    if let Some(context) = TraceContext::extract(delivery.message().headers()) {
        context.set_parent_of(&span);
    }
    span
}

/// Note where a delivery came from on its span.
fn note_delivery(span: &Span, delivery: &Delivery) {
    span.record(
        "messaging.message.id",
        tracing::field::display(delivery.message().id()),
    );
    let info = delivery.info();
    if let Some(partition) = info.partition {
        span.record("messaging.destination.partition.id", partition);
    }
    if let Some(offset) = info.offset {
        span.record("messaging.kafka.offset", offset);
    }
    if let Some(group) = &info.consumer_group {
        span.record("messaging.consumer.group.name", &**group);
    }
    if let Some(key) = &info.routing_key {
        span.record("messaging.rabbitmq.destination.routing_key", &**key);
    }
}

/// The context a message sent under `span` (listened to) carries: the span's own
/// OpenTelemetry ids when there are some; else a child of the context current now, or of the
/// one the message already carries (piped from another broker), or a new trace.
fn context_for_send(span: &Span, carried: Option<TraceContext>) -> TraceContext {
    let parent = TraceContext::current().or(carried);
    if let Some(parent) = &parent {
        // A span inside another already has its parent; one sent from outside any span is
        // parented to the context that is current or travels with the message.
        if Span::current().is_none() {
            parent.set_parent_of(span);
        }
    }
    TraceContext::of_span(span)
        .or_else(|| parent.map(|p| p.child()))
        .unwrap_or_else(TraceContext::root)
}

/// While nothing listens: pass on the context that is current (a processor sending the outputs
/// of an input), and touch nothing else, so a plain send costs one thread-local read.
fn propagate_quietly(headers: &mut crate::headers::Headers) {
    if let Some(context) = TraceContext::current_child() {
        context.inject(headers);
    }
}

/// Whether any subscriber may want an `INFO` span: one atomic load, and false while none is
/// installed, so the quiet paths do not even build a disabled span.
fn listening() -> bool {
    Level::INFO <= tracing::level_filters::LevelFilter::current()
}

/// [`propagate_quietly`] for a batch: one child context for all of it.
fn propagate_quietly_to<'m>(messages: impl Iterator<Item = &'m mut Message>) {
    if let Some(context) = TraceContext::current_child() {
        messages.for_each(|m| context.inject(m.headers_mut()));
    }
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
        mut message: Message,
    ) -> BoxFuture<'f, Result<PendingConfirm>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        if !listening() {
            propagate_quietly(message.headers_mut());
            return self.inner.enqueue(destination, message);
        }
        let span = send_span(self.system, destination, "enqueue");
        if span.is_disabled() {
            propagate_quietly(message.headers_mut());
            return self.inner.enqueue(destination, message);
        }
        span.record(
            "messaging.message.id",
            tracing::field::display(message.id()),
        );
        let carried = TraceContext::extract(message.headers());
        context_for_send(&span, carried).inject(message.headers_mut());
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
            propagate_quietly_to(messages.iter_mut());
            return self.inner.enqueue_batch(destination, messages, pending);
        }
        span.record("messaging.batch.message_count", messages.len());
        let context = context_for_send(&span, None);
        messages
            .iter_mut()
            .for_each(|m| context.inject(m.headers_mut()));
        Box::pin(
            self.inner
                .enqueue_batch(destination, messages, pending)
                .instrument(span),
        )
    }

    fn send<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        mut message: Message,
    ) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        if !listening() {
            propagate_quietly(message.headers_mut());
            return self.inner.send(destination, message);
        }
        let span = send_span(self.system, destination, "send");
        if span.is_disabled() {
            propagate_quietly(message.headers_mut());
            return self.inner.send(destination, message);
        }
        span.record(
            "messaging.message.id",
            tracing::field::display(message.id()),
        );
        let carried = TraceContext::extract(message.headers());
        context_for_send(&span, carried).inject(message.headers_mut());
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
        let mut messages = messages;
        let span = send_span(self.system, destination, "send_batch");
        if span.is_disabled() {
            propagate_quietly_to(messages.iter_mut());
            return self.inner.send_batch(destination, messages);
        }
        span.record("messaging.batch.message_count", messages.len());
        let context = context_for_send(&span, None);
        messages
            .iter_mut()
            .for_each(|m| context.inject(m.headers_mut()));
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
    ///
    /// The message's context becomes the receive span's parent (with the `otel` feature), so
    /// the receive joins the sender's trace. The span is opened when the receive has an
    /// outcome, not before the wait: OpenTelemetry fixes a span's parent when the span starts,
    /// and a receive cancelled while waiting (a `select!` taking another branch, a pipeline
    /// stopping) would otherwise leave a span with no message in a trace of its own. How long
    /// receives wait is the metrics layer's `messaging.client.operation.duration`.
    fn received(&self, span: &Span, delivery: Delivery) -> Delivery {
        note_delivery(span, &delivery);
        let context = TraceContext::extract(delivery.message().headers());
        if let Some(context) = &context {
            context.set_parent_of(span);
        }
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
                context,
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
        if !tracing::enabled!(Level::INFO) {
            return self.inner.receive();
        }
        Box::pin(async move {
            let result = self.inner.receive().await;
            let span = receive_span(self.system, &self.queue, "receive");
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
        if !tracing::enabled!(Level::INFO) {
            return self.inner.receive_timeout(timeout);
        }
        Box::pin(async move {
            let result = self.inner.receive_timeout(timeout).await?;
            let Some(delivery) = result else {
                return Ok(None);
            };
            let span = receive_span(self.system, &self.queue, "receive_timeout");
            Ok(Some(self.received(&span, delivery)))
        })
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        if !listening() {
            return self.inner.try_receive();
        }
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
    queue: Arc<str>,
    id: MessageId,
    /// The context the message carried: the parent of a settle made outside any span.
    context: Option<TraceContext>,
}

impl TracedSettle {
    fn span(&self, operation: &'static str) -> Span {
        let span = tracing::info_span!(
            "settle",
            otel.name = Empty,
            otel.kind = "client",
            messaging.system = self.system,
            messaging.destination.name = &*self.queue,
            messaging.operation.type = "settle",
            messaging.operation.name = operation,
            messaging.message.id = %self.id,
            error.type = Empty,
        );
        if !span.is_disabled() {
            span.record(
                "otel.name",
                tracing::field::display(format_args!("{operation} {}", self.queue)),
            );
            if let (Some(context), true) = (&self.context, Span::current().is_none()) {
                context.set_parent_of(&span);
            }
        }
        span
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

    /// The backend's immediate ack, passed on. Its span opens after the ack, since there is
    /// no way to know before it whether the backend acks at once: opened first, a backend
    /// that does not would leave an empty span beside the one its `ack` opens.
    fn try_ack(&mut self) -> Option<Result<()>> {
        let acked = self.inner.ack_now()?;
        record(&self.span("ack"), &acked);
        Some(acked)
    }
}

#[cfg(test)]
mod tests;
