//! Unit tests of the layer stack.

use std::sync::Mutex;

use super::test_support::{confirmed, delivery, everything, layered, now, Log, Stub};
use super::*;
use crate::consumer::MockConsumer;
use crate::producer::{Destination, MockProducer};
use crate::Message;

/// Notes, in one shared log, each time it admits or wraps something.
struct Noting {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Layer for Noting {
    fn name(&self) -> &'static str {
        self.name
    }
    fn admit(&self, _: &dyn Backend, open: Open<'_>) -> Result<()> {
        let what = match open {
            Open::Producer { .. } => "producer",
            Open::Consumer { .. } => "consumer",
            Open::Transactional { .. } => "transactional",
        };
        self.log
            .lock()
            .unwrap()
            .push(format!("admit {what} {}", self.name));
        Ok(())
    }
    fn producer(&self, _: &dyn Backend, producer: Box<dyn Producer>) -> Box<dyn Producer> {
        self.log.lock().unwrap().push(format!("wrap {}", self.name));
        producer
    }
}

#[test]
fn the_first_layer_added_is_outermost() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let stack = LayerStack::new()
        .layer(Noting {
            name: "outer",
            log: log.clone(),
        })
        .layer(Noting {
            name: "inner",
            log: log.clone(),
        });
    assert_eq!(stack.names(), ["outer", "inner"]);
    let backend = layered(
        Stub::new(everything()).with_producer(MockProducer::new()),
        stack,
    );
    now(backend.producer()).unwrap();
    // Admitted from the outside in; wrapped from the inside out, so outer wraps last.
    assert_eq!(
        *log.lock().unwrap(),
        [
            "admit producer outer",
            "admit producer inner",
            "wrap inner",
            "wrap outer"
        ]
    );
}

#[test]
fn an_empty_stack_gives_the_backend_back() {
    let backend: Arc<dyn Backend> = Arc::new(Stub::new(everything()));
    let same = LayerStack::new().apply(backend.clone());
    assert!(Arc::ptr_eq(&backend, &same));
}

#[test]
fn a_layered_backend_forwards_what_no_layer_touches() {
    let mut stub = Stub::new(everything());
    stub.topology
        .expect_delete_queue()
        .times(1)
        .returning(|_| Ok(()));
    let backend = layered(stub, LayerStack::new().layer(TracingLayer::new()));
    assert_eq!(backend.name(), "stub");
    assert_eq!(backend.capabilities(), &everything());
    assert_eq!(now(backend.server_version()).unwrap(), "stub 1");
    assert_eq!(
        now(backend.cluster_id()).unwrap().as_deref(),
        Some("stub-cluster")
    );
    now(backend.topology().delete_queue("q")).unwrap();
    now(backend.close()).unwrap();
}

#[test]
fn wrap_settle_moves_the_message_and_settles_through_the_new_handle() {
    struct Outer(Settlement, Log);
    #[async_trait]
    impl Settle for Outer {
        async fn ack(self: Box<Self>) -> Result<()> {
            self.1.lock().unwrap().push("outer ack".into());
            self.0.ack().await
        }
        async fn nack(self: Box<Self>, nack: crate::Nack) -> Result<()> {
            self.0.nack(nack).await
        }
        fn abandon(self: Box<Self>) {}
    }
    let log = Log::default();
    let d = delivery("payload", &log);
    let payload = d.message().payload().as_ptr();
    let outer_log = log.clone();
    let d = wrap_settle(d, |inner, info| {
        assert_eq!(&*info.source, "q");
        Box::new(Outer(inner, outer_log)) as Box<dyn Settle>
    });
    assert_eq!(d.message().payload().as_ptr(), payload, "the same bytes");
    now(d.ack()).unwrap();
    assert_eq!(*log.lock().unwrap(), ["outer ack", "ack"]);
}

/// A stack of every layer but chaos, as the benchmark runs it.
fn full_stack() -> LayerStack {
    LayerStack::new()
        .layer(TracingLayer::new())
        .layer(MetricsLayer::new())
        .layer(RetryLayer::new())
        .layer(CapabilityLayer::new())
}

#[test]
fn a_full_stack_hands_batches_to_the_backend_as_batches() {
    let mut producer = MockProducer::new();
    producer.expect_enqueue().never();
    producer
        .expect_enqueue_batch()
        .times(1)
        .returning(|_, messages, pending| {
            pending.extend(messages.drain(..).map(|m| Ok(confirmed(&m))));
        });
    producer
        .expect_send_batch()
        .times(1)
        .returning(|_, messages| {
            Ok(messages
                .iter()
                .map(|m| Ok(crate::Receipt::new(m.id().clone())))
                .collect())
        });
    let backend = layered(
        Stub::new(everything()).with_producer(producer),
        full_stack(),
    );
    let producer = now(backend.producer()).unwrap();
    let dest = Destination::queue("q");
    let mut messages: Vec<Message> = (0..3).map(|i| Message::new(format!("{i}"))).collect();
    let mut pending = Vec::new();
    now(producer.enqueue_batch(&dest, &mut messages, &mut pending));
    assert!(messages.is_empty());
    assert_eq!(pending.len(), 3);
    for p in pending {
        now(p.unwrap()).unwrap();
    }
    let sent = now(producer.send_batch(&dest, vec![Message::new("a"), Message::new("b")]));
    assert_eq!(sent.unwrap().len(), 2);
}

#[test]
fn a_full_stack_forwards_try_receive() {
    let log = Log::default();
    let mut consumer = MockConsumer::new();
    consumer.expect_receive().never();
    let ready = log.clone();
    consumer
        .expect_try_receive()
        .times(2)
        .returning(move || Some(Ok(delivery("x", &ready))));
    let backend = layered(
        Stub::new(everything()).with_consumer(consumer),
        full_stack(),
    );
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    let d = consumer.try_receive().unwrap().unwrap();
    now(d.ack()).unwrap();
    drop(consumer.try_receive());
    assert_eq!(*log.lock().unwrap(), ["ack", "abandon"]);
}

#[test]
fn the_capability_check_passes_an_immediate_ack_on() {
    /// Acks at once, and notes which settle call it got.
    struct AcksAtOnce(Log);
    #[async_trait]
    impl Settle for AcksAtOnce {
        async fn ack(self: Box<Self>) -> Result<()> {
            self.0.lock().unwrap().push("ack".into());
            Ok(())
        }
        async fn nack(self: Box<Self>, _: crate::Nack) -> Result<()> {
            Ok(())
        }
        fn abandon(self: Box<Self>) {
            self.0.lock().unwrap().push("abandon".into());
        }
        fn try_ack(&mut self) -> Option<Result<()>> {
            self.0.lock().unwrap().push("try_ack".into());
            Some(Ok(()))
        }
    }
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer.expect_receive().times(1).returning(move || {
        Ok(Delivery::new(
            Message::new("x"),
            crate::DeliveryInfo::new("q"),
            Box::new(AcksAtOnce(ready.clone())),
        ))
    });
    // Without delayed delivery the check wraps every settle handle (a delayed nack is refused).
    let caps = Capabilities {
        delayed_delivery: false,
        ..everything()
    };
    let backend = layered(
        Stub::new(caps).with_consumer(consumer),
        LayerStack::new().layer(CapabilityLayer::new()),
    );
    let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
    let d = now(consumer.receive()).unwrap();
    now(d.ack()).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["try_ack"],
        "acked at once, neither through the boxed ack nor given back"
    );
}
