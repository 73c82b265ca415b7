#![doc = include_str!("../docs.md")]

mod backend;
mod broker;
mod codec;
mod config;
mod consumer;
mod error;
mod producer;
mod queue;
mod settle;
mod topology;

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::layer::{CapabilityLayer, LayerStack};
use mailroom_core::{Backend, BackendFactory, Capabilities, Result};

pub use backend::MemoryBackend;
pub use config::{MemoryConfig, DEFAULT_MAX_MESSAGE_SIZE};
pub use consumer::MemoryConsumer;
pub use producer::MemoryProducer;
pub use queue::QueueDepth;

/// The backend's name in errors and reports.
pub const BACKEND: &str = "memory";

/// What the in-memory broker supports.
pub fn capabilities(config: &MemoryConfig) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.per_key_ordering = true;
    caps.competing_consumers = true;
    caps.replay = false;
    caps.delayed_delivery = true;
    caps.max_delay = None;
    caps.exchange_direct = true;
    caps.exchange_topic = true;
    caps.exchange_fanout = true;
    caps.exchange_headers = true;
    caps.dead_letter = true;
    caps.max_delivery_attempts = true;
    caps.attempt_count = true;
    caps.max_queue_length = true;
    caps.message_ttl = true;
    caps.batch_send = false;
    caps.transactions = false;
    caps.persistence = false;
    caps.redelivery_on_drop = true;
    caps.partitioned_queues = false;
    caps.repeated_header_names = true;
    caps.max_message_size = Some(config.max_message_size);
    caps.max_batch_size = None;
    caps.max_headers = None;
    caps
}

/// Opens `memory://` URLs.
///
/// What it opens comes inside the [`CapabilityLayer`], as from
/// [`Registry::connect`](mailroom_core::Registry::connect).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryFactory;

#[async_trait]
impl BackendFactory for MemoryFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::from_url(url)?);
        Ok(LayerStack::new()
            .layer(CapabilityLayer::new())
            .apply(backend))
    }
}
