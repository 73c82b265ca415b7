//! mailroom-sqs: Amazon SQS (and SQS-API servers such as fauxqs, ElasticMQ, LocalStack) through
//! `aws-sdk-sqs`.
//!
//! `sqs://HOST:PORT?region=us-east-1` talks to an SQS-API server at that endpoint over plain HTTP
//! (`&tls=true` for HTTPS); `sqs://?region=eu-west-1` talks to AWS itself. Credentials come from
//! the URL's user info (`sqs://KEY_ID:SECRET@...`, percent-encoded) or [`SqsConfig::credentials`],
//! otherwise from the standard AWS chain (environment, profile, web identity, ECS, IMDS). A
//! loopback endpoint without credentials gets fixed placeholder keys instead of the chain: an
//! emulator ignores them, and the chain would otherwise probe the EC2 metadata address from a
//! developer's machine. Secrets are never printed (see [`SqsConfig`]'s `Debug`).
//!
//! | capability              | SQS                                                                  |
//! |-------------------------|----------------------------------------------------------------------|
//! | exchanges               | none (SNS topics + filtered subscriptions are the intended mapping)  |
//! | competing consumers     | yes: a received message is invisible to the others                   |
//! | ordering                | none declared: standard queues do not order; FIFO queues (`*.fifo`) order per key (message group) |
//! | ack / nack              | ack = DeleteMessage, batched: `ack` returns once the delete is queued for the next batch call (a failed call is logged; its messages come back after their visibility timeout), and `close` waits for the calls queued so far (after `close`, an ack waits for its own call, since nothing else would); nack = visibility to 0 or to the delay, the same way |
//! | attempt count           | yes: `ApproximateReceiveCount`                                       |
//! | dead letters            | redrive policy (DLQ + `maxReceiveCount`); `Nack::DeadLetter` sends to the DLQ client-side, stamped, then deletes |
//! | max delivery attempts   | yes: the redrive policy's `maxReceiveCount`                          |
//! | delayed delivery        | `DelaySeconds`, at most 900 s, rounded up to whole seconds; requeue delays up to 12 h |
//! | message TTL             | no: retention (`extra` `MessageRetentionPeriod`, >= 60 s) deletes, it never dead-letters |
//! | bounded queues          | no                                                                   |
//! | replay, transactions    | no                                                                   |
//! | batch send              | yes: `SendMessageBatch`, 10 entries and 1 MiB per call               |
//! | persistence             | off: declared for emulators, which keep nothing across a restart (`?persistence=true` for AWS) |
//! | dropped delivery        | made visible again at once (visibility 0)                            |
//! | max message size        | 1 MiB, body plus attributes, as AWS counts it (`?max_message_size=`) |
//!
//! # How a message is carried
//!
//! The body is the payload when the payload is text SQS can carry (UTF-8 made only of the XML
//! characters SQS allows, and not empty); anything else is sent base64-encoded and marked with
//! the string attribute `mailroom.encoding` = `base64` (or `empty`), which the consumer decodes
//! transparently. The id, key, timestamp and header order travel in one binary attribute,
//! `mailroom.meta` (JSON), so a round trip is exact. Headers whose name is a valid SQS attribute
//! name and whose value is non-empty XML-safe text also become string attributes of their own, so
//! other SQS clients (and SNS filter policies) see them, as long as AWS's limit of 10 attributes
//! per message allows; the rest (and empty values, which SQS rejects) are packed in
//! `mailroom.meta`. Messages from other clients are read as they are: the SQS message id, string
//! and number attributes as headers, binary ones base64-encoded.
//!
//! # FIFO queues
//!
//! A queue whose name ends in `.fifo` is a FIFO queue: the message key is its `MessageGroupId`
//! (a send without a key is `InvalidInput`) and the message id its `MessageDeduplicationId`
//! (hashed when it is not 1..=128 printable ASCII characters). FIFO queues take no per-message
//! delay, so a delayed send to one is `InvalidInput`.
//!
//! # Producing and consuming
//!
//! `enqueue` takes a slot of the producer's bounded window and hands the message to one batcher
//! task per queue, which packs what is waiting into `SendMessageBatch` calls (at most 10 entries
//! and [`SqsConfig::max_message_size`] bytes each) with a few calls in flight at once. Entries the
//! service failed on its own side are retried alone; entries it refused get that entry's error.
//! A consumer long-polls (`WaitTimeSeconds`) for up to 10 messages at a time into a buffer bounded
//! by its prefetch, extends the visibility of deliveries held longer than half the visibility
//! timeout, and releases (visibility 0) whatever is dropped unsettled.
//!
//! # Latency and throughput
//!
//! Every send and receive is an HTTPS call, so SQS trades latency for throughput through
//! batching and calls in flight:
//!
//! | setting (URL) | default | buys | costs |
//! |---|---|---|---|
//! | `linger_ms` | 1 | a partial batch goes out after 1 ms: one message sent alone waits at most that long | under load, batches fill by themselves; raising it fills more of them (fewer calls, which AWS bills per call) at that much added latency per send |
//! | `send_concurrency` | 8 | up to 8 `SendMessageBatch` calls per queue in flight, so throughput is not one call's round trip / 10 | more concurrent calls against the service's per-queue limits |
//! | `send_window` | 10,000 | that many unconfirmed messages per producer before `enqueue` waits (backpressure) | memory for that many messages |
//! | `wait_time_ms` | 20,000 | long polling: an empty queue costs one call per 20 s and a message is handed over as soon as it arrives | nothing in latency; `close` of an idle consumer can take up to that long on AWS |
//! | prefetch (`ConsumerOptions::prefetch`) | 10 | up to 10 messages per receive call, buffered ahead of `receive` | buffered messages are invisible to other consumers (their visibility timeout runs) |
//! | acks | batched `DeleteMessageBatch` | one call per 10 acks | an ack is durable once its batch call returns (`close` waits for it) |
//!
//! There is no per-message durability knob: SQS stores a message redundantly before it answers a
//! send, and `send` resolves on that answer.

mod backend;
mod codec;
mod config;
mod consumer;
mod error;
mod producer;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{Backend, BackendFactory, Capabilities, Result};

pub use backend::SqsBackend;
pub use config::{
    CredentialsSource, SqsConfig, StaticCredentials, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_URL,
};
pub use consumer::SqsConsumer;
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
    caps.exchange_direct = false;
    caps.exchange_topic = false;
    caps.exchange_fanout = false;
    caps.exchange_headers = false;
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
    caps.max_message_size = Some(config.max_message_size);
    caps.max_batch_size = Some(MAX_BATCH_ENTRIES);
    // Headers beyond what fits in attributes are packed, so the header count is not limited.
    caps.max_headers = None;
    caps
}

/// Opens `sqs://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SqsFactory;

#[async_trait]
impl BackendFactory for SqsFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["sqs"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(
            SqsBackend::connect(SqsConfig::from_url(url)?).await?,
        ))
    }
}
