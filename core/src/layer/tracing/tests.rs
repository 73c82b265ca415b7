//! Unit tests of the tracing layer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use super::super::test_support::{
    acked_at_once, confirmed, delivery, delivery_with, everything, layered, Log, Stub,
};
use super::super::LayerStack;
use super::*;
use crate::consumer::MockConsumer;
use crate::delivery::TryAck;
use crate::producer::MockProducer;
use crate::trace_context::TRACEPARENT;
use crate::ErrorKind;

type Fields = BTreeMap<String, String>;

/// Keeps every span's name and fields, as an exporter would see them.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(&'static str, Fields)>>>,
    next: Arc<AtomicU64>,
}

struct Into<'a>(&'a mut Fields);

impl Visit for Into<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields::new();
        span.record(&mut Into(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((span.metadata().name(), fields));
        self.next.fetch_add(1, Ordering::SeqCst);
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let (_, fields) = &mut spans[span.into_u64() as usize - 1];
        values.record(&mut Into(fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    fn span(&self, name: &str, operation: &str) -> Fields {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .find(|(n, f)| {
                *n == name
                    && f.get("messaging.operation.name").map(String::as_str) == Some(operation)
            })
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no {name} span for {operation}"))
    }
}

fn traced(stub: Stub) -> Arc<dyn Backend> {
    layered(stub, LayerStack::new().layer(TracingLayer::new()))
}

#[tokio::test]
async fn a_send_span_carries_the_messaging_attributes_and_its_confirms_failure() {
    let capture = Capture::default();
    let _on = tracing::subscriber::set_default(capture.clone());
    let mut producer = MockProducer::new();
    let mut turn = 0;
    producer.expect_enqueue().times(2).returning(move |_, m| {
        turn += 1;
        if turn == 1 {
            Ok(confirmed(&m))
        } else {
            Ok(PendingConfirm::waiting(async move {
                Err(crate::Error::new(ErrorKind::Rejected, "nacked"))
            }))
        }
    });
    let backend = traced(Stub::new(everything()).with_producer(producer));
    let producer = backend.producer().await.unwrap();
    let message = Message::new("x");
    let id = message.id().to_string();
    let dest = Destination::queue("orders");
    producer
        .enqueue(&dest, message)
        .await
        .unwrap()
        .await
        .unwrap();
    let span = capture.span("send", "enqueue");
    assert_eq!(span["messaging.system"], "stub");
    assert_eq!(span["messaging.destination.name"], "orders");
    assert_eq!(span["messaging.operation.type"], "send");
    assert_eq!(span["messaging.message.id"], id);
    assert!(!span.contains_key("error.type"), "{span:?}");

    let confirm = producer.enqueue(&dest, Message::new("y")).await.unwrap();
    assert!(confirm.await.is_err());
    let spans = capture.spans.lock().unwrap();
    let failed = &spans.last().unwrap().1;
    assert_eq!(failed["error.type"], "rejected");
}

#[tokio::test]
async fn receive_and_settle_spans_name_the_queue_and_the_message() {
    let capture = Capture::default();
    let _on = tracing::subscriber::set_default(capture.clone());
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_receive()
        .times(1)
        .returning(move || Ok(delivery("x", &ready)));
    let backend = traced(Stub::new(everything()).with_consumer(consumer));
    let mut consumer = backend.consumer("q", Default::default()).await.unwrap();
    let d = consumer.receive().await.unwrap();
    let id = d.message().id().to_string();
    d.ack().await.unwrap();
    let receive = capture.span("receive", "receive");
    assert_eq!(receive["messaging.operation.type"], "receive");
    assert_eq!(receive["messaging.destination.name"], "q");
    assert_eq!(receive["messaging.message.id"], id);
    let settle = capture.span("settle", "ack");
    assert_eq!(settle["messaging.operation.type"], "settle");
    assert_eq!(settle["messaging.message.id"], id);
    assert_eq!(*log.lock().unwrap(), ["ack"]);
}

#[tokio::test]
async fn batches_get_one_span_with_their_size_and_stay_batches() {
    let capture = Capture::default();
    let _on = tracing::subscriber::set_default(capture.clone());
    let mut producer = MockProducer::new();
    producer.expect_enqueue().never();
    producer
        .expect_enqueue_batch()
        .times(1)
        .returning(|_, messages, pending| {
            pending.extend(messages.drain(..).map(|m| Ok(confirmed(&m))));
        });
    let backend = traced(Stub::new(everything()).with_producer(producer));
    let producer = backend.producer().await.unwrap();
    let mut messages = vec![Message::new("a"), Message::new("b")];
    let mut pending = Vec::new();
    producer
        .enqueue_batch(&Destination::queue("q"), &mut messages, &mut pending)
        .await;
    assert_eq!(pending.len(), 2);
    let span = capture.span("send", "enqueue_batch");
    assert_eq!(span["messaging.batch.message_count"], "2");
}

fn sends_into(seen: Arc<Mutex<Vec<Message>>>) -> MockProducer {
    let mut producer = MockProducer::new();
    producer.expect_enqueue().returning(move |_, m| {
        let confirm = confirmed(&m);
        seen.lock().unwrap().push(m);
        Ok(confirm)
    });
    producer
}

#[tokio::test]
async fn a_listened_send_starts_a_trace_in_the_headers_or_continues_the_one_carried() {
    let capture = Capture::default();
    let _on = tracing::subscriber::set_default(capture.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = traced(Stub::new(everything()).with_producer(sends_into(seen.clone())));
    let producer = backend.producer().await.unwrap();
    let dest = Destination::exchange("x", "orders.eu");
    producer
        .enqueue(&dest, Message::new("a"))
        .await
        .unwrap()
        .await
        .unwrap();
    let carried = TraceContext::root();
    let mut piped = Message::new("b");
    carried.inject(piped.headers_mut());
    producer.enqueue(&dest, piped).await.unwrap().await.unwrap();

    let seen = seen.lock().unwrap();
    let first = TraceContext::extract(seen[0].headers()).expect("a traceparent");
    let second = TraceContext::extract(seen[1].headers()).expect("a traceparent");
    assert_ne!(first.trace_id(), carried.trace_id());
    assert_eq!(second.trace_id(), carried.trace_id());
    assert_ne!(second.span_id(), carried.span_id());
    let span = capture.span("send", "enqueue");
    assert_eq!(span["otel.name"], "send x");
    assert_eq!(span["otel.kind"], "producer");
    assert_eq!(
        span["messaging.rabbitmq.destination.routing_key"],
        "orders.eu"
    );
}

#[tokio::test]
async fn unheard_sends_leave_headers_alone_unless_a_context_is_in_scope() {
    // A subscriber that wants nothing, set here so that other tests' subscribers, alive on
    // their threads, do not make these callsites look wanted.
    let _off = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = traced(Stub::new(everything()).with_producer(sends_into(seen.clone())));
    let producer = backend.producer().await.unwrap();
    let dest = Destination::queue("q");
    producer
        .enqueue(&dest, Message::new("a"))
        .await
        .unwrap()
        .await
        .unwrap();
    let input = TraceContext::root().with_tracestate("vendor=1");
    input
        .clone()
        .in_scope(async { producer.enqueue(&dest, Message::new("b")).await })
        .await
        .unwrap()
        .await
        .unwrap();

    let seen = seen.lock().unwrap();
    assert!(
        seen[0].headers().get(TRACEPARENT).is_none(),
        "{:?}",
        seen[0]
    );
    let output = TraceContext::extract(seen[1].headers()).expect("the input's trace");
    assert_eq!(output.trace_id(), input.trace_id());
    assert_ne!(output.span_id(), input.span_id());
    assert_eq!(output.tracestate(), Some("vendor=1"));
}

#[tokio::test]
async fn receive_and_process_spans_note_partition_and_offset() {
    let capture = Capture::default();
    let _on = tracing::subscriber::set_default(capture.clone());
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer.expect_receive().times(1).returning(move || {
        let mut info = crate::DeliveryInfo::new("q");
        info.partition = Some(3);
        info.offset = Some(42);
        Ok(delivery_with("x", info, &ready))
    });
    let backend = traced(Stub::new(everything()).with_consumer(consumer));
    let mut consumer = backend.consumer("q", Default::default()).await.unwrap();
    let d = consumer.receive().await.unwrap();
    let process = super::process_span(&d);
    d.ack().await.unwrap();
    drop(process);
    let receive = capture.span("receive", "receive");
    assert_eq!(receive["otel.kind"], "client");
    assert_eq!(receive["messaging.destination.partition.id"], "3");
    assert_eq!(receive["messaging.kafka.offset"], "42");
    let process = capture.span("process", "process");
    assert_eq!(process["otel.kind"], "consumer");
    assert_eq!(process["otel.name"], "process q");
    assert_eq!(process["messaging.operation.type"], "process");
    assert_eq!(process["messaging.kafka.offset"], "42");
}

/// A backend that acks at once keeps doing so through a traced settle, which still opens its
/// settle span (after the ack: nothing was waited for).
#[tokio::test]
async fn an_at_once_ack_goes_through_a_traced_settle_with_its_span() {
    let capture = Capture::default();
    let _on = tracing::subscriber::set_default(capture.clone());
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_receive()
        .times(1)
        .returning(move || Ok(acked_at_once("x", &ready)));
    let backend = traced(Stub::new(everything()).with_consumer(consumer));
    let mut consumer = backend.consumer("q", Default::default()).await.unwrap();
    let d = consumer.receive().await.unwrap();
    let id = d.message().id().to_string();
    let (_, _, settlement) = d.into_parts();
    let acked = settlement.try_ack();
    assert!(matches!(acked, TryAck::Done(Ok(()))), "not acked at once");
    let settle = capture.span("settle", "ack");
    assert_eq!(settle["messaging.message.id"], id);
    assert_eq!(*log.lock().unwrap(), ["try_ack"]);
}
