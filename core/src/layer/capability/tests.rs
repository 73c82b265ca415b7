//! Unit tests of the capability layer.

use std::sync::Arc;
use std::time::Duration;

use super::super::test_support::{confirmed, delivery, everything, layered, now, Log, Stub};
use super::super::LayerStack;
use super::*;
use crate::backend::{BackendFactory, Registry};
use crate::consumer::{ConsumerOptions, MockConsumer, Replay};
use crate::guarantee::{DeliveryGuarantee, DeliveryGuarantees};
use crate::producer::{MockProducer, ProducerOptions};
use crate::transaction::TransactionOptions;
use crate::ErrorKind;

fn checked(stub: Stub) -> Arc<dyn Backend> {
    layered(stub, LayerStack::new().layer(CapabilityLayer::new()))
}

fn unsupported(error: &Error, capability: &str, operation: &str) {
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert_eq!(error.backend(), Some("stub"));
    assert_eq!(error.operation(), Some(operation));
    assert!(error.message().contains(capability), "{error}");
}

#[test]
fn opening_what_is_not_declared_never_reaches_the_backend() {
    // The stub has no consumer prepared: reaching it would panic.
    let backend = checked(Stub::new(Capabilities::default()));
    let options = ConsumerOptions::default().replay(Replay::Earliest);
    let error = now(backend.consumer("q", options)).err().unwrap();
    unsupported(&error, "replay", "consume");
    let error = now(backend.transactional("q", TransactionOptions::new("t")))
        .err()
        .unwrap();
    unsupported(&error, "transactions", "transactional");
    let options = ProducerOptions::default().guarantee(DeliveryGuarantee::Unconfirmed);
    let error = now(backend.producer_with(options)).err().unwrap();
    unsupported(&error, "'unconfirmed'", "producer");
}

#[test]
fn an_offered_guarantee_reaches_the_backend() {
    let caps = Capabilities {
        delivery_guarantees: DeliveryGuarantees::of(&[DeliveryGuarantee::Unconfirmed]),
        ..Capabilities::default()
    };
    let backend = checked(Stub::new(caps).with_producer(MockProducer::new()));
    // The stub keeps the default `producer_with`, which implements `Confirmed` only: reaching
    // it with `Unconfirmed` is its own refusal, not the layer's.
    let options = ProducerOptions::default().guarantee(DeliveryGuarantee::Unconfirmed);
    let error = now(backend.producer_with(options)).err().unwrap();
    unsupported(&error, "does not implement", "producer");
    let options = ProducerOptions::default().guarantee(DeliveryGuarantee::Confirmed);
    assert!(now(backend.producer_with(options)).is_ok());
}

#[test]
fn a_send_over_the_declared_limits_returns_its_message_unsent() {
    let mut producer = MockProducer::new();
    producer.expect_enqueue().never();
    producer.expect_send().never();
    let caps = Capabilities {
        max_message_size: Some(100),
        ..everything()
    };
    let backend = checked(Stub::new(caps).with_producer(producer));
    let producer = now(backend.producer()).unwrap();
    let big = Message::new(vec![0u8; 101]);
    let id = big.id().clone();
    let error = now(producer.enqueue(&Destination::queue("q"), big)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PayloadTooLarge, "{error}");
    assert_eq!(error.undelivered().map(Message::id), Some(&id));
    let big = Message::new(vec![0u8; 101]);
    let error = now(producer.send(&Destination::queue("q"), big)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PayloadTooLarge, "{error}");
}

#[test]
fn try_enqueue_checks_the_limits_then_takes_the_backends_path() {
    let mut producer = MockProducer::new();
    producer.expect_enqueue().never();
    producer
        .expect_try_enqueue()
        .times(1)
        .returning(|_, message| TryEnqueue::Done(Ok(confirmed(&message))));
    let caps = Capabilities {
        max_message_size: Some(100),
        ..everything()
    };
    let backend = checked(Stub::new(caps).with_producer(producer));
    let producer = now(backend.producer()).unwrap();
    let big = Message::new(vec![0u8; 101]);
    let id = big.id().clone();
    let TryEnqueue::Done(Err(error)) = producer.try_enqueue(&Destination::queue("q"), big) else {
        panic!("an oversized message passed the check");
    };
    assert_eq!(error.kind(), ErrorKind::PayloadTooLarge, "{error}");
    assert_eq!(error.undelivered().map(Message::id), Some(&id));
    let small = Message::new("fits");
    let id = small.id().clone();
    let TryEnqueue::Done(Ok(mut pending)) = producer.try_enqueue(&Destination::queue("q"), small)
    else {
        panic!("a message within the limits did not reach the backend's try_enqueue");
    };
    assert_eq!(pending.take_if_ready().unwrap().unwrap().id, id);
}

#[test]
fn delays_and_exchanges_the_backend_lacks_are_refused() {
    let mut producer = MockProducer::new();
    producer.expect_enqueue().never();
    let backend = checked(Stub::new(Capabilities::default()).with_producer(producer));
    let producer = now(backend.producer()).unwrap();
    let delayed = Message::builder("x")
        .delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let error = now(producer.enqueue(&Destination::queue("q"), delayed)).unwrap_err();
    unsupported(&error, "delayed_delivery", "send");
    let error =
        now(producer.enqueue(&Destination::exchange("x", "k"), Message::new("m"))).unwrap_err();
    unsupported(&error, "exchange_direct", "send");
    assert!(error.undelivered().is_some());
}

#[test]
fn a_valid_batch_goes_to_the_backend_as_one_batch() {
    let mut producer = MockProducer::new();
    producer.expect_enqueue().never();
    producer
        .expect_enqueue_batch()
        .times(1)
        .returning(|_, messages, pending| {
            pending.extend(messages.drain(..).map(|m| Ok(confirmed(&m))));
        });
    let caps = Capabilities {
        max_message_size: Some(100),
        ..everything()
    };
    let backend = checked(Stub::new(caps).with_producer(producer));
    let producer = now(backend.producer()).unwrap();
    let mut messages = vec![Message::new("a"), Message::new("b")];
    let mut pending = Vec::new();
    now(producer.enqueue_batch(&Destination::queue("q"), &mut messages, &mut pending));
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(Result::is_ok));
}

#[test]
fn a_refused_message_keeps_its_place_in_a_batch() {
    let mut producer = MockProducer::new();
    producer
        .expect_enqueue()
        .times(2)
        .returning(|_, m| Ok(confirmed(&m)));
    producer
        .expect_send_batch()
        .times(1)
        .returning(|_, messages| {
            assert_eq!(messages.len(), 2, "only the valid ones reach the backend");
            Ok(messages
                .iter()
                .map(|m| Ok(Receipt::new(m.id().clone())))
                .collect())
        });
    let caps = Capabilities {
        max_message_size: Some(100),
        ..everything()
    };
    let backend = checked(Stub::new(caps).with_producer(producer));
    let producer = now(backend.producer()).unwrap();
    let batch = || {
        vec![
            Message::new("a"),
            Message::new(vec![0u8; 101]),
            Message::new("c"),
        ]
    };
    let mut messages = batch();
    let mut pending = Vec::new();
    now(producer.enqueue_batch(&Destination::queue("q"), &mut messages, &mut pending));
    let kinds: Vec<_> = pending
        .iter()
        .map(|p| p.as_ref().err().map(Error::kind))
        .collect();
    assert_eq!(kinds, [None, Some(ErrorKind::PayloadTooLarge), None]);

    let messages = batch();
    let ids: Vec<_> = messages.iter().map(|m| m.id().clone()).collect();
    let results = now(producer.send_batch(&Destination::queue("q"), messages)).unwrap();
    assert_eq!(results[0].as_ref().unwrap().id, ids[0]);
    assert_eq!(
        results[1]
            .as_ref()
            .unwrap_err()
            .undelivered()
            .map(Message::id),
        Some(&ids[1])
    );
    assert_eq!(results[2].as_ref().unwrap().id, ids[2]);
}

#[test]
fn a_delayed_nack_the_backend_lacks_is_refused_and_the_delivery_comes_back() {
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_receive()
        .times(2)
        .returning(move || Ok(delivery("x", &ready)));
    let backend = checked(Stub::new(Capabilities::default()).with_consumer(consumer));
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    let d = now(consumer.receive()).unwrap();
    let error = now(d.nack(Nack::requeue_after(Duration::from_secs(1)))).unwrap_err();
    unsupported(&error, "delayed_delivery", "nack");
    let d = now(consumer.receive()).unwrap();
    now(d.nack(Nack::requeue())).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["abandon", "nack Requeue { delay: None }"]
    );
}

#[test]
fn a_backend_with_delays_keeps_its_consumer_unwrapped() {
    let mut consumer = MockConsumer::new();
    consumer.expect_try_receive().times(1).returning(|| None);
    let backend = checked(Stub::new(everything()).with_consumer(consumer));
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    assert!(consumer.try_receive().is_none());
}

/// A [`Stub`] whose settle handles are said to refuse what it lacks themselves.
struct RefusesItself(Stub);

#[async_trait]
impl Backend for RefusesItself {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.0.capabilities()
    }
    async fn server_version(&self) -> Result<String> {
        self.0.server_version().await
    }
    async fn producer(&self) -> Result<Box<dyn Producer>> {
        self.0.producer().await
    }
    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        self.0.consumer(queue, options).await
    }
    fn topology(&self) -> &dyn Topology {
        self.0.topology()
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
    fn settle_refuses_unsupported(&self) -> bool {
        true
    }
    fn producer_refuses_unsupported(&self) -> bool {
        true
    }
}

#[test]
fn a_backend_whose_producers_refuse_themselves_keeps_its_producer_unwrapped() {
    let mut producer = MockProducer::new();
    // The oversize message reaches the backend: the layer left the refusal to it.
    producer
        .expect_try_enqueue()
        .times(1)
        .returning(|_, message| TryEnqueue::Wait(message));
    let caps = Capabilities {
        max_message_size: Some(100),
        ..everything()
    };
    let stub = Stub::new(caps).with_producer(producer);
    let backend = LayerStack::new()
        .layer(CapabilityLayer::new())
        .apply(Arc::new(RefusesItself(stub)));
    let producer = now(backend.producer()).unwrap();
    let big = Message::new(vec![0u8; 101]);
    assert!(matches!(
        producer.try_enqueue(&Destination::queue("q"), big),
        TryEnqueue::Wait(_)
    ));
}

#[test]
fn a_backend_whose_settles_refuse_themselves_keeps_its_consumer_unwrapped() {
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_receive()
        .times(1)
        .returning(move || Ok(delivery("x", &ready)));
    // Without delayed delivery: only the backend's word keeps the layer off its deliveries.
    let stub = Stub::new(Capabilities::default()).with_consumer(consumer);
    let backend = LayerStack::new()
        .layer(CapabilityLayer::new())
        .apply(Arc::new(RefusesItself(stub)));
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    let d = now(consumer.receive()).unwrap();
    // The stub's settle handle takes the delayed nack: the layer did not stand in its way.
    now(d.nack(Nack::requeue_after(Duration::from_secs(1)))).unwrap();
    assert_eq!(*log.lock().unwrap(), ["nack Requeue { delay: Some(1s) }"]);
}

#[test]
fn declarations_are_validated_then_checked_before_the_backend() {
    // The mock topology expects nothing: any call reaching it fails the test.
    let backend = checked(Stub::new(Capabilities::default()));
    let topology = backend.topology();
    let error = now(topology.declare_queue(&QueueSpec::new(""))).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    assert_eq!(error.operation(), Some("declare_queue"));
    for (spec, capability) in [
        (QueueSpec::new("q").dead_letter_queue("dlq"), "dead_letter"),
        (
            QueueSpec::new("q").max_delivery_attempts(3),
            "max_delivery_attempts",
        ),
        (
            QueueSpec::new("q").max_length(1, crate::Overflow::Reject),
            "max_queue_length",
        ),
        (
            QueueSpec::new("q").message_ttl(Duration::from_secs(1)),
            "message_ttl",
        ),
    ] {
        let error = now(topology.declare_queue(&spec)).unwrap_err();
        unsupported(&error, capability, "declare_queue");
    }
    let error =
        now(topology.declare_exchange(&ExchangeSpec::new("x", ExchangeKind::Topic))).unwrap_err();
    unsupported(&error, "exchange_topic", "declare_exchange");
    let error = now(topology.bind(&Binding::fanout("x", "q"))).unwrap_err();
    unsupported(&error, "exchange_fanout", "bind");
}

#[test]
fn what_is_declared_passes_through() {
    let mut stub = Stub::new(everything());
    stub.topology
        .expect_declare_queue()
        .times(1)
        .returning(|_| Ok(()));
    let backend = checked(stub);
    let spec = QueueSpec::new("q")
        .dead_letter_queue("dlq")
        .max_delivery_attempts(2);
    now(backend.topology().declare_queue(&spec)).unwrap();
}

struct StubFactory;

#[async_trait]
impl BackendFactory for StubFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["stub"]
    }
    async fn connect(&self, _: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(Stub::new(Capabilities::default())))
    }
}

#[test]
fn the_registry_puts_every_backend_inside_the_check() {
    let backend = now(Registry::new().with(StubFactory).connect("stub://")).unwrap();
    let options = ConsumerOptions::default().replay(Replay::Latest);
    let error = now(backend.consumer("q", options)).err().unwrap();
    unsupported(&error, "replay", "consume");
}

/// A factory that applies the check itself, as mailroom's backend crates do.
struct CheckedFactory;

#[async_trait]
impl BackendFactory for CheckedFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["checked"]
    }
    async fn connect(&self, _: &str) -> Result<Arc<dyn Backend>> {
        Ok(checked(Stub::new(Capabilities::default())))
    }
}

#[test]
fn the_registry_adds_no_second_check_to_a_checked_backend() {
    let registry = Registry::new()
        .with(StubFactory)
        .with(CheckedFactory)
        .layer(crate::layer::TracingLayer::new());
    for url in ["stub://", "checked://"] {
        let backend = now(registry.connect(url)).unwrap();
        assert_eq!(backend.layers(), ["tracing", "capability"], "{url}");
    }
}
