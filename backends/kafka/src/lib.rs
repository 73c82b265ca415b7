#![doc = include_str!("../docs.md")]

mod backend;
mod codec;
mod config;
mod connection;
mod consumer;
mod context;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod lag;
mod offsets;
mod producer;
mod replay;
mod routing;
mod settle;
mod topology;
mod transaction;
mod transaction_inputs;
mod transaction_producer;

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::layer::{CapabilityLayer, LayerStack};
use mailroom_core::{
    Backend, BackendFactory, Capabilities, Capability, ClientSide, DeliveryGuarantee,
    DeliveryGuarantees, ExchangeKind, Result,
};

pub use backend::KafkaBackend;
pub use codec::{ATTEMPT_HEADER, ID_HEADER, TIMESTAMP_HEADER};
pub use config::{KafkaConfig, Partitioner, DEFAULT_MESSAGE_MAX_BYTES, FRAMING_RESERVE};
pub use consumer::KafkaConsumer;
pub use producer::KafkaProducer;
pub use topology::KafkaTopology;
pub use transaction::KafkaTransactional;

/// The backend's name in errors and reports.
pub const BACKEND: &str = "kafka";

/// What the Kafka backend supports, as configured.
pub fn capabilities(config: &KafkaConfig) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.per_key_ordering = true;
    caps.competing_consumers = true;
    caps.replay = true;
    caps.delayed_delivery = false;
    caps.max_delay = None;
    caps.exchange_direct = true;
    caps.exchange_topic = true;
    caps.exchange_fanout = true;
    caps.exchange_headers = true;
    caps.dead_letter = true;
    caps.max_delivery_attempts = true;
    caps.attempt_count = true;
    caps.max_queue_length = false;
    caps.message_ttl = false;
    caps.batch_send = true;
    caps.transactions = config.transactions;
    caps.persistence = config.persistent;
    caps.redelivery_on_drop = true;
    caps.partitioned_queues = true;
    caps.repeated_header_names = true;
    caps.max_message_size = Some(config.max_message_size());
    caps.max_batch_size = None;
    caps.max_headers = None;
    caps.delivery_guarantees = DeliveryGuarantees::of(&[
        DeliveryGuarantee::LeaderConfirmed,
        DeliveryGuarantee::Unconfirmed,
    ]);
    // Kafka routes nothing and keeps no dead letters or attempt counts: the consumer filters
    // each exchange topic by its bindings, and settles republish copies (see docs.md).
    caps.client_side = ClientSide::of(&[
        Capability::Exchange(ExchangeKind::Direct),
        Capability::Exchange(ExchangeKind::Topic),
        Capability::Exchange(ExchangeKind::Headers),
        Capability::DeadLetter,
        Capability::MaxDeliveryAttempts,
        Capability::AttemptCount,
    ]);
    caps
}

/// Opens `kafka://` URLs.
///
/// What it opens comes inside the [`CapabilityLayer`], as from
/// [`Registry::connect`](mailroom_core::Registry::connect).
#[derive(Debug, Default, Clone, Copy)]
pub struct KafkaFactory;

#[async_trait]
impl BackendFactory for KafkaFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["kafka"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let backend: Arc<dyn Backend> = Arc::new(KafkaBackend::from_url(url).await?);
        Ok(LayerStack::new()
            .layer(CapabilityLayer::new())
            .apply(backend))
    }
}
