//! What the layers' unit tests share: a backend that hands out prepared parts, a settle handle
//! that logs, and small constructors.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::backend::Backend;
use crate::capabilities::Capabilities;
use crate::consumer::{Consumer, ConsumerOptions};
use crate::delivery::{Delivery, DeliveryInfo, Nack, Settle};
use crate::error::Result;
use crate::message::Message;
use crate::producer::{PendingConfirm, Producer, Receipt};
use crate::topology::{MockTopology, Topology};

/// A backend whose producer and consumer are prepared by the test; anything else it is asked
/// for panics, so a test that passes did not reach it.
pub(crate) struct Stub {
    pub caps: Capabilities,
    pub producer: Mutex<Option<Box<dyn Producer>>>,
    pub consumer: Mutex<Option<Box<dyn Consumer>>>,
    pub topology: MockTopology,
}

impl Stub {
    pub fn new(caps: Capabilities) -> Self {
        Stub {
            caps,
            producer: Mutex::new(None),
            consumer: Mutex::new(None),
            topology: MockTopology::new(),
        }
    }

    pub fn with_producer(self, producer: impl Producer + 'static) -> Self {
        *self.producer.lock().unwrap() = Some(Box::new(producer));
        self
    }

    pub fn with_consumer(self, consumer: impl Consumer + 'static) -> Self {
        *self.consumer.lock().unwrap() = Some(Box::new(consumer));
        self
    }
}

#[async_trait]
impl Backend for Stub {
    fn name(&self) -> &'static str {
        "stub"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    async fn server_version(&self) -> Result<String> {
        Ok("stub 1".into())
    }
    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(self
            .producer
            .lock()
            .unwrap()
            .take()
            .expect("the test prepared no producer"))
    }
    async fn consumer(&self, _: &str, _: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(self
            .consumer
            .lock()
            .unwrap()
            .take()
            .expect("the test prepared no consumer"))
    }
    fn topology(&self) -> &dyn Topology {
        &self.topology
    }
    async fn cluster_id(&self) -> Result<Option<String>> {
        Ok(Some("stub-cluster".into()))
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Every capability on and no limits: nothing for a capability check to refuse.
pub(crate) fn everything() -> Capabilities {
    Capabilities {
        per_key_ordering: true,
        competing_consumers: true,
        replay: true,
        delayed_delivery: true,
        exchange_direct: true,
        exchange_topic: true,
        exchange_fanout: true,
        exchange_headers: true,
        dead_letter: true,
        max_delivery_attempts: true,
        attempt_count: true,
        max_queue_length: true,
        message_ttl: true,
        batch_send: true,
        transactions: true,
        persistence: true,
        redelivery_on_drop: true,
        partitioned_queues: true,
        ..Capabilities::default()
    }
}

/// Which settle calls reached the backend, in order.
pub(crate) type Log = Arc<Mutex<Vec<String>>>;

struct Logged(Log);

#[async_trait]
impl Settle for Logged {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.0.lock().unwrap().push("ack".into());
        Ok(())
    }
    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        self.0.lock().unwrap().push(format!("nack {nack:?}"));
        Ok(())
    }
    fn abandon(self: Box<Self>) {
        self.0.lock().unwrap().push("abandon".into());
    }
}

/// Like [`Logged`], for a backend that acks at once ([`Settle::try_ack`]).
struct AcksAtOnce(Log);

#[async_trait]
impl Settle for AcksAtOnce {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.0.lock().unwrap().push("ack".into());
        Ok(())
    }
    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        self.0.lock().unwrap().push(format!("nack {nack:?}"));
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

/// A delivery from queue `q` whose backend acks at once, its settles going to `log`.
pub(crate) fn acked_at_once(payload: &str, log: &Log) -> Delivery {
    Delivery::new(
        Message::new(payload.to_owned()),
        DeliveryInfo::new("q"),
        Box::new(AcksAtOnce(log.clone())),
    )
}

/// A delivery of `payload` from queue `q` whose settles go to `log`.
pub(crate) fn delivery(payload: &str, log: &Log) -> Delivery {
    Delivery::new(
        Message::new(payload.to_owned()),
        DeliveryInfo::new("q"),
        Box::new(Logged(log.clone())),
    )
}

/// A delivery of `payload` with `info` whose settles go to `log`.
pub(crate) fn delivery_with(payload: &str, info: DeliveryInfo, log: &Log) -> Delivery {
    Delivery::new(
        Message::new(payload.to_owned()),
        info,
        Box::new(Logged(log.clone())),
    )
}

/// A confirm that is already in.
pub(crate) fn confirmed(message: &Message) -> PendingConfirm {
    PendingConfirm::ready(Ok(Receipt::new(message.id().clone())))
}

/// Run a future that never waits (mocks answer at once).
pub(crate) fn now<F: std::future::Future>(f: F) -> F::Output {
    futures_util::FutureExt::now_or_never(f).expect("answers at once")
}

/// A backend in a stack of these layers, as `Arc<dyn Backend>`.
pub(crate) fn layered(stub: Stub, stack: super::LayerStack) -> Arc<dyn Backend> {
    stack.apply(Arc::new(stub))
}
