//! mailroom-memory: the embedded broker, complete and in-process.
//!
//! No server is needed: `mailroom::connect("memory://")` opens a private broker, and
//! `memory://NAME` one shared by every connection to that name in the process.
//!
//! | capability              | memory                                                       |
//! |-------------------------|--------------------------------------------------------------|
//! | exchanges               | direct, topic (AMQP patterns), fanout, headers (all / any)   |
//! | competing consumers     | yes: each message goes to one consumer of a queue            |
//! | ordering                | per queue; redeliveries go back to the front                 |
//! | ack / nack              | ack forgets; nack requeues (optionally after a delay)         |
//! | attempt count           | yes: 1 on first delivery, +1 per redelivery                   |
//! | dead letters            | to the queue's dead-letter queue on nack, max attempts or TTL |
//! | delayed delivery        | yes, any delay                                               |
//! | bounded queues          | `max_length` with backpressure or reject                     |
//! | replay                  | no (messages are gone once acked)                            |
//! | transactions            | no                                                           |
//! | persistence             | no: everything lives in this process                         |
//! | dropped delivery        | requeued at once                                             |
//! | max message size        | 16 MiB by default (`?max_message_size=`)                     |
//!
//! A send is confirmed once the message is in every queue it routes to. Dead-lettered messages
//! carry the reason, source queue and attempt count in `x-mailroom-dead-letter-*` headers; a
//! queue without a dead-letter queue discards what it dead-letters, as AMQP does. Redeliveries
//! and dead letters are not held back by `max_length`: they were accepted once already.

mod backend;
mod config;
mod consumer;
mod producer;
mod queue;
mod topology;

use std::sync::Arc;

use async_trait::async_trait;
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
    caps.max_message_size = Some(config.max_message_size);
    caps.max_batch_size = None;
    caps.max_headers = None;
    caps
}

/// Opens `memory://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryFactory;

#[async_trait]
impl BackendFactory for MemoryFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(MemoryBackend::from_url(url)?))
    }
}
