//! Layers: cross-cutting work (capability checks, retries, tracing, metrics, fault injection)
//! written once, around any backend, instead of at every call site.
//!
//! A [`Layer`] sees a backend's producers, consumers (and through them every delivery's settle
//! handle), its topology API and its transactional units as they are opened, and may wrap each
//! one. A [`LayerStack`] applies layers to a backend and gives back an `Arc<dyn Backend>` again,
//! so code that takes a backend takes a layered one unchanged. The model is tower's
//! `Layer`/`ServiceBuilder`, over trait objects because backends are chosen at run time:
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn mailroom_core::Backend>) {
//! use mailroom_core::layer::{LayerStack, MetricsLayer, RetryLayer, TracingLayer};
//!
//! // The first layer added is the outermost: a send passes tracing, then metrics, then retry.
//! let backend = LayerStack::new()
//!     .layer(TracingLayer::new())
//!     .layer(MetricsLayer::new())
//!     .layer(RetryLayer::new())
//!     .apply(backend);
//! # }
//! ```
//!
//! [`Registry::connect`](crate::Registry::connect) puts every backend it opens inside the
//! [`CapabilityLayer`], so an operation the backend declares it lacks is refused before it
//! reaches the backend; the factories of mailroom's backend crates apply it too. The backends
//! themselves do not repeat these checks: a concrete backend type opened directly
//! (`MemoryBackend::new()`, `KafkaBackend::from_url`, ...) is the **bare** backend, which
//! accepts what the layer would refuse, except where accepting would quietly lose a message or
//! a request (a replay on a backend without replay, a delay on one without delayed delivery).
//! Put a bare backend inside the check as the registry does:
//!
//! ```no_run
//! # fn demo(bare: std::sync::Arc<dyn mailroom_core::Backend>) {
//! use mailroom_core::layer::{CapabilityLayer, LayerStack};
//!
//! let checked = LayerStack::new().layer(CapabilityLayer::new()).apply(bare);
//! # }
//! ```
//!
//! **Cost.** A layer that only checks (the capability check, tracing while no subscriber
//! listens) hands the backend's own future back, so it adds no allocation per message. A layer
//! that must see the outcome (retry, metrics, tracing while listened to) wraps the call: one
//! boxed future per `enqueue` or `receive` (the traits use `async_trait`). The fast paths
//! (`enqueue_batch`, `send_batch`, `try_receive`, `receive_timeout`) are forwarded as they are,
//! so a batch pays that once per batch and `try_receive` not at all. Confirms that are already
//! known (`PendingConfirm::take_if_ready`) are not wrapped. A layer that watches settles wraps
//! each delivery's settle handle, one small allocation per delivery, and only where it has
//! something to do: the capability check for a backend without delayed delivery, tracing while
//! a subscriber listens, metrics when settle durations are asked for.
//! `backends/memory/benches/layers.rs` measures what a stack costs.

mod capability;
mod chaos;
mod metrics;
mod queue_depth;
mod retry;
mod tracing;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::Backend;
use crate::capabilities::Capabilities;
use crate::consumer::{Consumer, ConsumerOptions};
use crate::delivery::{Delivery, DeliveryInfo, Settle, Settlement};
use crate::error::Result;
use crate::producer::{Producer, ProducerOptions};
use crate::topology::{Binding, ExchangeSpec, QueueSpec, Topology};
use crate::transaction::{TransactionOptions, Transactional};

pub use capability::CapabilityLayer;
pub use chaos::{Chaos, ChaosCounts, ChaosLayer, Fault, Operation, When};
pub use metrics::{MetricsLayer, CONSUMED_MESSAGES, OPERATION_DURATION, SENT_MESSAGES};
pub use queue_depth::{publish_queue_depth, watch_queue_depth, QUEUE_DEPTH};
pub use retry::{Backoff, RetryLayer, DEFAULT_FIRST_DELAY, DEFAULT_MAX_DELAY, DEFAULT_RETRIES};
pub use tracing::{process_span, TracingLayer};

/// What a backend is about to open, shown to every layer before the backend sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Open<'a> {
    /// A producer (`options` is the default for [`Backend::producer`]).
    Producer {
        /// How it is opened.
        options: &'a ProducerOptions,
    },
    /// A consumer on `queue`.
    Consumer {
        /// The queue.
        queue: &'a str,
        /// How it subscribes.
        options: &'a ConsumerOptions,
    },
    /// A transactional unit consuming `queue`.
    Transactional {
        /// The queue.
        queue: &'a str,
        /// How it is opened.
        options: &'a TransactionOptions,
    },
}

/// Cross-cutting work around a backend: each method sees one part of it and may wrap it.
///
/// Every method has a default that changes nothing, so a layer implements only what it needs.
/// `backend` is the backend the stack was applied to, for its name and capabilities.
pub trait Layer: Send + Sync + 'static {
    /// The layer's name, for `Debug` output.
    fn name(&self) -> &'static str;

    /// Called before the backend opens a producer, consumer or transactional unit: an error
    /// refuses the open without reaching the backend.
    fn admit(&self, backend: &dyn Backend, open: Open<'_>) -> Result<()> {
        let _ = (backend, open);
        Ok(())
    }

    /// Wrap a producer the backend opened.
    fn producer(&self, backend: &dyn Backend, producer: Box<dyn Producer>) -> Box<dyn Producer> {
        let _ = backend;
        producer
    }

    /// Wrap a consumer the backend opened on `queue`. Wrapping the settle handle of each
    /// delivery is done here too (see [`wrap_settle`]).
    fn consumer(
        &self,
        backend: &dyn Backend,
        queue: &str,
        consumer: Box<dyn Consumer>,
    ) -> Box<dyn Consumer> {
        let _ = (backend, queue);
        consumer
    }

    /// Wrap the backend's topology API (once, when the stack is applied).
    fn topology(&self, backend: &dyn Backend, topology: Box<dyn Topology>) -> Box<dyn Topology> {
        let _ = backend;
        topology
    }

    /// Wrap a transactional unit the backend opened on `queue`.
    fn transactional(
        &self,
        backend: &dyn Backend,
        queue: &str,
        unit: Box<dyn Transactional>,
    ) -> Box<dyn Transactional> {
        let _ = (backend, queue);
        unit
    }
}

/// Layers to apply to a backend, outermost first (as tower's `ServiceBuilder`).
#[derive(Clone, Default)]
pub struct LayerStack {
    layers: Vec<Arc<dyn Layer>>,
}

impl LayerStack {
    /// An empty stack: applying it gives the backend back unchanged.
    pub fn new() -> Self {
        LayerStack::default()
    }

    /// Add a layer inside the ones added before it: calls pass the earlier layers first.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Add a layer that is shared with other stacks (a chaos plan read by the test, say).
    pub fn layer_arc(mut self, layer: Arc<dyn Layer>) -> Self {
        self.layers.push(layer);
        self
    }

    /// Whether the stack has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers' names, outermost first.
    pub fn names(&self) -> Vec<&'static str> {
        self.layers.iter().map(|l| l.name()).collect()
    }

    /// The backend inside these layers. An empty stack returns `backend` itself.
    pub fn apply(&self, backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
        if self.layers.is_empty() {
            return backend;
        }
        let mut topology: Box<dyn Topology> = Box::new(InnerTopology(backend.clone()));
        for layer in self.layers.iter().rev() {
            topology = layer.topology(&*backend, topology);
        }
        Arc::new(Layered {
            inner: backend,
            layers: self.layers.clone().into(),
            topology,
        })
    }
}

impl fmt::Debug for LayerStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// A backend inside a stack of layers.
struct Layered {
    inner: Arc<dyn Backend>,
    /// Outermost first.
    layers: Arc<[Arc<dyn Layer>]>,
    topology: Box<dyn Topology>,
}

impl Layered {
    fn wrap_producer(&self, mut producer: Box<dyn Producer>) -> Box<dyn Producer> {
        for layer in self.layers.iter().rev() {
            producer = layer.producer(&*self.inner, producer);
        }
        producer
    }

    fn admit(&self, open: Open<'_>) -> Result<()> {
        self.layers
            .iter()
            .try_for_each(|layer| layer.admit(&*self.inner, open))
    }
}

#[async_trait]
impl Backend for Layered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    async fn server_version(&self) -> Result<String> {
        self.inner.server_version().await
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        self.admit(Open::Producer {
            options: &ProducerOptions::default(),
        })?;
        let producer = self.inner.producer().await?;
        Ok(self.wrap_producer(producer))
    }

    async fn producer_with(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        self.admit(Open::Producer { options: &options })?;
        let producer = self.inner.producer_with(options).await?;
        Ok(self.wrap_producer(producer))
    }

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        self.admit(Open::Consumer {
            queue,
            options: &options,
        })?;
        let mut consumer = self.inner.consumer(queue, options).await?;
        for layer in self.layers.iter().rev() {
            consumer = layer.consumer(&*self.inner, queue, consumer);
        }
        Ok(consumer)
    }

    fn topology(&self) -> &dyn Topology {
        &*self.topology
    }

    async fn transactional(
        &self,
        queue: &str,
        options: TransactionOptions,
    ) -> Result<Box<dyn Transactional>> {
        self.admit(Open::Transactional {
            queue,
            options: &options,
        })?;
        let mut unit = self.inner.transactional(queue, options).await?;
        for layer in self.layers.iter().rev() {
            unit = layer.transactional(&*self.inner, queue, unit);
        }
        Ok(unit)
    }

    async fn cluster_id(&self) -> Result<Option<String>> {
        self.inner.cluster_id().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn layers(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.layers.iter().map(|l| l.name()).collect();
        names.extend(self.inner.layers());
        names
    }
}

impl fmt::Debug for Layered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("backend", &self.inner.name())
            .field(
                "layers",
                &self.layers.iter().map(|l| l.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The topology API of a backend held by `Arc`, so layers can own what they wrap.
struct InnerTopology(Arc<dyn Backend>);

#[async_trait]
impl Topology for InnerTopology {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        self.0.topology().declare_exchange(spec).await
    }
    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.0.topology().delete_exchange(name).await
    }
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()> {
        self.0.topology().declare_queue(spec).await
    }
    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.0.topology().delete_queue(name).await
    }
    async fn bind(&self, binding: &Binding) -> Result<()> {
        self.0.topology().bind(binding).await
    }
    async fn unbind(&self, binding: &Binding) -> Result<()> {
        self.0.topology().unbind(binding).await
    }
    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        self.0.topology().queue_depth(queue).await
    }
}

/// Give a delivery a new settle handle made from its old one; the message moves, uncopied.
///
/// `wrap` gets the delivery's [`Settlement`] (which abandons the delivery if dropped unsettled)
/// and its info, and returns the handle the delivery settles through from now on.
pub fn wrap_settle(
    delivery: Delivery,
    wrap: impl FnOnce(Settlement, &DeliveryInfo) -> Box<dyn Settle>,
) -> Delivery {
    let (message, info, settlement) = delivery.into_parts();
    let settle = wrap(settlement, &info);
    Delivery::new(message, info, settle)
}

/// Fills a result slot while a layer works on what was in it; the caller never sees it, and
/// its empty message allocates nothing.
fn stand_in() -> crate::Error {
    crate::Error::new(crate::ErrorKind::AlreadySettled, String::new())
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests;
