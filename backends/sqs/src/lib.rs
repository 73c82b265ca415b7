#![doc = include_str!("../docs.md")]

mod backend;
mod codec;
mod config;
mod connection;
mod consumer;
mod error;
mod exchange;
mod filter;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod producer;
mod settle;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::layer::{CapabilityLayer, LayerStack};
use mailroom_core::{Backend, BackendFactory, Capabilities, Result};

pub use backend::SqsBackend;
pub use codec::{ENCODING_ATTR, META_ATTR};
pub use config::{
    CredentialsSource, SqsConfig, StaticCredentials, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_URL,
};
pub use consumer::SqsConsumer;
pub use filter::{MAX_POLICY_COMBINATIONS, MAX_POLICY_KEYS, ROUTING_KEY_ATTR, ROUTING_WORDS_ATTR};
pub use producer::SqsProducer;
pub use topology::SqsTopology;

/// The backend's name in errors and reports.
pub const BACKEND: &str = "sqs";

/// Longest `DelaySeconds` SQS accepts on a send.
pub const MAX_SEND_DELAY: Duration = Duration::from_secs(900);
/// Longest visibility timeout SQS accepts, hence the longest delayed requeue.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// Most entries in one SQS batch call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Most message attributes AWS accepts on one message.
pub const MAX_ATTRIBUTES: usize = 10;

/// What the SQS backend supports with this configuration.
pub fn capabilities(config: &SqsConfig) -> Capabilities {
    let mut caps = Capabilities::default();
    caps.per_key_ordering = false;
    caps.competing_consumers = true;
    caps.replay = false;
    caps.delayed_delivery = true;
    caps.max_delay = Some(MAX_SEND_DELAY);
    // Exchanges are SNS topics; SNS filter policies route, not the client (see docs.md for the
    // topic patterns and header matches a policy cannot express, refused at bind).
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
    caps.transactions = false;
    caps.persistence = config.persistence;
    caps.redelivery_on_drop = true;
    caps.partitioned_queues = false;
    caps.repeated_header_names = true;
    caps.max_message_size = Some(config.max_message_size);
    caps.max_batch_size = Some(MAX_BATCH_ENTRIES);
    // Headers beyond what fits in attributes are packed, so the header count is not limited.
    caps.max_headers = None;
    caps
}

/// Opens `sqs://` URLs.
///
/// What it opens comes inside the [`CapabilityLayer`], as from
/// [`Registry::connect`](mailroom_core::Registry::connect).
#[derive(Debug, Default, Clone, Copy)]
pub struct SqsFactory;

#[async_trait]
impl BackendFactory for SqsFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["sqs"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let backend: Arc<dyn Backend> =
            Arc::new(SqsBackend::connect(SqsConfig::from_url(url)?).await?);
        Ok(LayerStack::new()
            .layer(CapabilityLayer::new())
            .apply(backend))
    }
}
