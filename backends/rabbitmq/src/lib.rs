#![doc = include_str!("../docs.md")]

mod backend;
mod bounded;
pub mod codec;
mod config;
mod confirm;
mod connection;
mod consumer;
mod declared;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod producer;
mod settle;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::layer::{CapabilityLayer, LayerStack};
use mailroom_core::{
    Backend, BackendFactory, Capabilities, DeliveryGuarantee, DeliveryGuarantees, Result,
};

pub use backend::RabbitBackend;
pub use config::{
    RabbitConfig, DEFAULT_CONFIRM_WINDOW, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFETCH,
};
pub use consumer::RabbitConsumer;
pub use producer::RabbitProducer;
pub use topology::RabbitTopology;

/// The backend's name in errors and reports.
pub const BACKEND: &str = "rabbitmq";

/// The longest delay a TTL delay queue can hold a message: `x-message-ttl` is at most 2^32-1 ms.
pub const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// What the RabbitMQ backend supports.
pub fn capabilities(config: &RabbitConfig) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.per_key_ordering = true;
    caps.competing_consumers = true;
    caps.replay = false;
    caps.delayed_delivery = true;
    caps.max_delay = Some(MAX_DELAY);
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
    caps.persistence = config.persistent;
    caps.redelivery_on_drop = true;
    caps.partitioned_queues = false;
    caps.max_message_size = Some(config.max_message_size);
    caps.max_batch_size = None;
    caps.max_headers = None;
    caps.delivery_guarantees = DeliveryGuarantees::of(&[DeliveryGuarantee::Unconfirmed]);
    caps
}

/// Opens `amqp://` and `amqps://` URLs.
///
/// What it opens comes inside the [`CapabilityLayer`], as from
/// [`Registry::connect`](mailroom_core::Registry::connect).
#[derive(Debug, Default, Clone, Copy)]
pub struct RabbitFactory;

#[async_trait]
impl BackendFactory for RabbitFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["amqp", "amqps"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let backend: Arc<dyn Backend> = Arc::new(RabbitBackend::from_url(url).await?);
        Ok(LayerStack::new()
            .layer(CapabilityLayer::new())
            .apply(backend))
    }
}
