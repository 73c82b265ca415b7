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
mod runtime;
mod settle;
mod stream;
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
    QueueType, RabbitConfig, DEFAULT_CONFIRM_WINDOW, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFETCH,
};
pub use consumer::RabbitConsumer;
pub use producer::RabbitProducer;
pub use stream::position_queue as stream_position_queue;
pub use topology::RabbitTopology;

/// The backend's name in errors and reports.
pub const BACKEND: &str = "rabbitmq";

/// The longest delay a TTL delay queue can hold a message: `x-message-ttl` is at most 2^32-1 ms.
pub const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// What the RabbitMQ backend supports, which depends on the queue type it was opened with
/// ([`RabbitConfig::queue_type`], `?queue_type=`).
///
/// Classic queues: no replay (an acked message is gone). Stream queues (`?queue_type=stream`):
/// `replay`, but no competing consumers (every consumer of a stream reads all of it), no
/// bound by message count, no per-message TTL, no dead-lettering, no delayed delivery (RabbitMQ
/// 3.10 drops what a delay queue dead-letters into a stream) and no redelivery to the same
/// consumer of a dropped delivery (a stream has no requeue: the group's next consumer reads it
/// again from the stored position).
pub fn capabilities(config: &RabbitConfig) -> Capabilities {
    let stream = config.queue_type == QueueType::Stream;
    let mut caps = Capabilities::default();
    caps.per_key_ordering = true;
    caps.competing_consumers = !stream;
    caps.replay = stream;
    caps.delayed_delivery = !stream;
    caps.max_delay = (!stream).then_some(MAX_DELAY);
    caps.exchange_direct = true;
    caps.exchange_topic = true;
    caps.exchange_fanout = true;
    caps.exchange_headers = true;
    caps.dead_letter = !stream;
    caps.max_delivery_attempts = !stream;
    caps.attempt_count = true;
    caps.max_queue_length = !stream;
    caps.message_ttl = !stream;
    caps.batch_send = false;
    caps.transactions = false;
    caps.persistence = config.persistent;
    caps.redelivery_on_drop = !stream;
    caps.partitioned_queues = false;
    caps.repeated_header_names = false;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_declared_for_streams_only_and_what_streams_lack_is_off() {
        let classic = capabilities(&RabbitConfig::default());
        assert!(!classic.replay);
        assert!(classic.competing_consumers && classic.dead_letter && classic.message_ttl);
        let stream = capabilities(&RabbitConfig {
            queue_type: QueueType::Stream,
            ..RabbitConfig::default()
        });
        assert!(stream.replay);
        assert!(stream.per_key_ordering && stream.attempt_count);
        assert_eq!(stream.max_delay, None);
        for (lacks, name) in [
            (stream.competing_consumers, "competing_consumers"),
            (stream.dead_letter, "dead_letter"),
            (stream.max_delivery_attempts, "max_delivery_attempts"),
            (stream.max_queue_length, "max_queue_length"),
            (stream.message_ttl, "message_ttl"),
            (stream.redelivery_on_drop, "redelivery_on_drop"),
            (stream.delayed_delivery, "delayed_delivery"),
        ] {
            assert!(!lacks, "a stream backend declares {name}");
        }
    }
}
