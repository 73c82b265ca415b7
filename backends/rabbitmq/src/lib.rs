//! mailroom-rabbitmq: RabbitMQ through lapin, with every AMQP concept where a RabbitMQ user
//! expects it.
//!
//! `amqp://user:pass@host:5672/vhost` (or `amqps://` for TLS through rustls, with
//! `?ca_file=/path/ca.pem` to trust a private CA) opens a [`RabbitBackend`]; see
//! [`RabbitConfig`] for every setting and its default.
//!
//! | capability              | RabbitMQ                                                                  |
//! |-------------------------|---------------------------------------------------------------------------|
//! | exchanges               | direct, topic, fanout, headers (all / any): native                        |
//! | competing consumers     | yes: each consumer has its own channel on one queue                       |
//! | ordering                | per queue with a single consumer (`x-single-active-consumer=true` in `QueueSpec::extra` to enforce it); a re-send after a reconnect or a client-side requeue can reorder |
//! | publish confirms        | always on; `confirm_window` (default 1024) unconfirmed messages in flight  |
//! | mandatory               | on by default: a missing queue is `NotFound`, an unroutable exchange send `Unroutable` |
//! | ack / nack              | basic.ack; nack-requeue (see attempt count); dead-letter (below)          |
//! | attempt count           | quorum queues: `x-delivery-count`; classic queues: a requeue re-publishes a copy carrying `x-mailroom-attempt` and acks the original; a broker redelivery (dropped consumer, lost connection) adds one |
//! | dead letters            | queue's `x-dead-letter-exchange` (TTL, delivery limit); `Nack::DeadLetter` publishes the message stamped with the reason to the dead-letter queue, then acks |
//! | max delivery attempts   | yes, on quorum queues: `max_delivery_attempts` declares a quorum queue with `x-delivery-limit` |
//! | delayed delivery        | yes, without plugins: a per-delay TTL queue dead-letters into the destination; max 49.7 days (`x-message-ttl` limit) |
//! | bounded queues          | `x-max-length` with `reject-publish`: `Reject` is `QueueFull`, `Backpressure` re-offers until there is room |
//! | message TTL             | `x-message-ttl`                                                           |
//! | replay                  | no (streams are not used)                                                 |
//! | batch send              | no batch call in AMQP 0-9-1; `send_batch` pipelines within the window     |
//! | transactions            | no (AMQP tx is not exposed)                                               |
//! | persistence             | yes: persistent messages (delivery mode 2) by default, in durable queues   |
//! | dropped delivery        | basic.nack requeue at once; the broker redelivers anything unacked when a channel closes |
//! | max message size        | 16 MiB by default (`?max_message_size=`), checked before any I/O          |
//!
//! How a message maps to AMQP (payload, id, headers, key, timestamp) is in [`codec`]; how a
//! `QueueSpec` maps to queue arguments is in [`topology`].
//!
//! **Reconnect.** When the broker goes away (restart, `rabbitmqctl stop_app`), the next operation
//! reconnects with exponential backoff (100 ms to 2 s) for up to `reconnect_timeout_ms`
//! (default 60 s), re-declares the exchanges, queues and bindings this backend declared, and
//! carries on: producers re-publish every message accepted but not yet confirmed (so it may
//! arrive twice, never zero times), consumers consume again and the broker redelivers what was
//! unacked. An ack on a channel that died is a `Closed` error: the broker redelivers that message.
//!
//! **Every wait on the broker is bounded.** A broker coming back from a restart can accept a
//! connection and then leave a request unanswered. Each request (channel.open, confirm.select,
//! basic.qos, basic.consume, a declaration, a publish's write) waits at most `connect_timeout_ms`
//! (default 10 s); a connection that leaves one unanswered that long is given up, and its
//! producers and consumers move to a new one. A confirm that does not come within
//! `connect_timeout_ms` of its publish is re-published on a new channel; an ack or nack that
//! cannot be handed over in that time fails with `Timeout`. An operation that cannot get
//! through within `reconnect_timeout_ms` fails with a temporary `Timeout` or `Connection` error
//! (a send hands its message back); closes give up after `connect_timeout_ms`.
//!
//! **Confirms.** One driver task per producer awaits the broker's confirms in publish order (one
//! wake-up per confirm, not a task per message); only a send that needs more than a plain ack
//! (a re-publish after a lost connection, a refused or returned message) gets a task of its own.
//! Measured against raw lapin with the same window and prefetch (`cargo bench -p mailroom-bench
//! --features rabbitmq --bench vs_lapin`), publish-with-confirms and consume-with-ack run at parity.
//!
//! **Latency and throughput.** Each setting is a URL parameter
//! (`amqp://…?confirm_window=4096&prefetch=500`). With the defaults, `compare --local` measured
//! end-to-end p50 1.3 ms / p99 2.8 ms at 2,000 msgs/s of 1 KiB (RabbitMQ 3.10.8, same 2-core
//! machine; see docs/compare-local).
//!
//! | setting | default | buys | costs |
//! |---|---|---|---|
//! | `confirm_window` | 1,024 | that many publishes in flight per producer, confirmed asynchronously: throughput is not one round trip per message | memory for the unconfirmed messages; past it `enqueue` waits (backpressure) |
//! | `prefetch` | 100 | deliveries in flight per consumer, so the next one is already there when one is acked | a crash redelivers up to that many; one slow consumer holds that many away from the others |
//! | `persistent` | true | messages in durable queues survive a broker restart (the restart fault test: 0 lost) | the broker writes each to disk before confirming |
//! | `mandatory` | true | a message no queue takes is an error (`NotFound` / `Unroutable`), not a silent drop | a `basic.return` to handle, nothing measurable |
//! | quorum queue (`QueueSpec::extra` `x-queue-type=quorum`, or `max_delivery_attempts`) | classic | replicated, broker-counted delivery limit | a Raft write per message: more latency than a classic queue |
//! | `heartbeat_secs` | 10 | a dead peer is noticed within two beats | a frame each way per beat |
//!
//! **Tests.** `tests/conformance.rs` (the shared suite), `tests/interop.rs` (plain lapin both
//! ways), `tests/bad_input.rs`, `tests/reconnect.rs` and `tests/unresponsive.rs` (a relay that
//! stalls, swallows or cuts a connection at a chosen AMQP method: every reconnect step and every
//! wait is bounded), and `tests/faults.rs`, which stops and starts the shared broker and is
//! therefore `#[ignore]`d: run it alone with
//! `cargo test -p mailroom-rabbitmq --test faults -- --ignored --nocapture` (scripts/test.sh does).
//! `tests/restart_soak.rs` runs the same restart scenario 20 times in a row (about 8 minutes;
//! `--test restart_soak -- --ignored`).
//!
//! **Limits, honestly.** Facts about a queue (quorum or classic, its dead-letter queue, its
//! overflow) are known for queues declared through the same backend; for other queues a
//! consumer treats the queue as classic, `Nack::DeadLetter` falls back to the broker's own
//! dead-lettering (basic.nack without requeue: the reason header cannot travel), and a nack
//! from the broker is `Rejected`. A delayed message goes through a delay queue, so mandatory
//! routing is checked against the delay queue, not the final destination.

mod backend;
pub mod codec;
mod config;
mod consumer;
mod error;
mod producer;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{Backend, BackendFactory, Capabilities, Result};

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
    caps
}

/// Opens `amqp://` and `amqps://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RabbitFactory;

#[async_trait]
impl BackendFactory for RabbitFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["amqp", "amqps"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(RabbitBackend::from_url(url).await?))
    }
}
