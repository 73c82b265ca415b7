//! The backend handle over one in-memory broker: opening it, its typed accessors, and the
//! `Backend` trait.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::operation::PRODUCER;
use mailroom_core::{Backend, Capabilities, Consumer, ConsumerOptions, Producer, Result, Topology};

use crate::broker::Broker;
use crate::config::MemoryConfig;
use crate::consumer::MemoryConsumer;
use crate::producer::MemoryProducer;
use crate::queue::QueueDepth;
use crate::BACKEND;

/// A connection to an in-memory broker.
///
/// Cloning is cheap and every clone sees the same broker. A broker opened by name
/// (`memory://NAME`) is shared by every connection to that name in this process while any of
/// them is alive.
///
/// This is the bare backend: the capability checks (what the backend lacks, message limits,
/// declaration validation) are core's `CapabilityLayer`, which `MemoryFactory`, `mailroom::connect`
/// and `Registry::connect` put around it (see the crate docs, "The capability check").
#[derive(Clone)]
pub struct MemoryBackend {
    pub(crate) broker: Arc<Broker>,
}

impl MemoryBackend {
    /// A private broker with the default configuration.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A broker with this configuration (shared by name if `config.name` is set).
    pub fn with_config(config: MemoryConfig) -> Self {
        MemoryBackend {
            broker: Broker::open(config),
        }
    }

    /// Open from a `memory://` URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::with_config(MemoryConfig::from_url(url)?))
    }

    /// The configuration this broker was opened with.
    pub fn config(&self) -> &MemoryConfig {
        &self.broker.config
    }

    /// How many messages a queue holds (ready, delayed, unacked).
    pub fn queue_depth(&self, queue: &str) -> Result<QueueDepth> {
        Ok(self.broker.queue(queue)?.depth())
    }

    /// A typed producer (the same as `Backend::producer`, without the box).
    pub fn memory_producer(&self) -> MemoryProducer {
        MemoryProducer::new(self.broker.clone())
    }

    /// A typed consumer (the same as `Backend::consumer`, without the box).
    pub fn memory_consumer(&self, queue: &str, options: ConsumerOptions) -> Result<MemoryConsumer> {
        MemoryConsumer::new(self.broker.clone(), queue, options)
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.broker.config)
            .finish()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.broker.capabilities
    }

    async fn server_version(&self) -> Result<String> {
        Ok(format!("mailroom-memory {}", env!("CARGO_PKG_VERSION")))
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        self.broker.check_open(PRODUCER)?;
        Ok(Box::new(self.memory_producer()))
    }

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.memory_consumer(queue, options)?))
    }

    fn topology(&self) -> &dyn Topology {
        self
    }

    async fn close(&self) -> Result<()> {
        self.broker.close();
        Ok(())
    }

    /// Every send checks the declared limits first (`MemoryProducer::check_limits`), so the
    /// capability layer's wrapper, a call and a move per send, is left out.
    fn producer_refuses_unsupported(&self) -> bool {
        true
    }
}
