//! mailroom-kafka: Kafka through rdkafka (bundled librdkafka), for any Kafka-protocol broker.
//!
//! `mailroom::connect("kafka://127.0.0.1:9092")`; the URL takes several brokers
//! (`kafka://a:9092,b:9092`), `user:password@` for SASL/PLAIN, and any librdkafka property as a
//! query parameter (`?security.protocol=SASL_SSL&linger.ms=10`); see [`KafkaConfig::from_url`].
//! Tested against Apache Kafka 4.1.1 (KRaft, one node, from `scripts/brokers.sh`) on loopback;
//! any Kafka-protocol broker that implements the same requests works (`scripts/brokers.sh up
//! tansu` starts a second implementation for comparison).
//!
//! | capability              | kafka                                                          |
//! |-------------------------|----------------------------------------------------------------|
//! | queue                   | a topic `Q` + the consumer group `Q` (`consumer(Q)` joins it)   |
//! | exchanges               | fanout only: a topic; binding `Q` subscribes group `Q` to it    |
//! |                         | direct / topic / headers: `Unsupported` (no routing in Kafka)   |
//! | competing consumers     | yes: the group shares the partitions (one busy member each)    |
//! | ordering                | per partition, so per key (the key picks the partition)        |
//! | ack                     | commit of the contiguous settled prefix of each partition      |
//! | nack + requeue          | retry path: copy to the queue's topic with attempt + 1          |
//! | attempt count           | yes, in the internal `x-mailroom-attempt` header                |
//! | dead letters            | to the queue's DLQ topic, on nack or after max attempts        |
//! | replay                  | yes: earliest, latest, an offset, a timestamp                  |
//! | delayed delivery        | no                                                             |
//! | bounded queues / TTL    | no (retention is not a TTL; pass topic configs via `extra`)    |
//! | batching                | yes: librdkafka batches pipelined sends (`linger.ms`)          |
//! | transactions            | yes: [`KafkaTransactional`] consumes, produces, commits as one  |
//! |                         | (`?transactions=false` for a broker without them; see below)   |
//! | read committed          | yes, by default (`?isolation.level=read_uncommitted` to see all) |
//! | persistence             | yes (`?persistent=false` for a broker on memory storage)       |
//! | dropped delivery        | requeued (copy with attempt + 1); dropped consumer commits     |
//! | max message size        | `message.max.bytes` (default 1,000,000) less 512 bytes framing |
//!
//! **Producer.** One librdkafka producer per `producer()`, idempotent by default
//! (`enable.idempotence=true`, overridable), with librdkafka's batching. The key picks the
//! partition. The id travels in the `x-mailroom-id` header and a set timestamp both as the
//! record's timestamp and in `x-mailroom-timestamp`; both headers are stripped on receive, so a
//! message arrives exactly as it was sent. Records from other producers get the id
//! `kafka:TOPIC:PARTITION:OFFSET` and the record's timestamp. `send` resolves on the delivery
//! report; a failed send returns the message inside the error. The message size is checked
//! against `message.max.bytes` before any I/O, and a send to a topic that does not exist is
//! `NotFound` at once (its existence is looked up once per topic and producer).
//!
//! **Consumer and commits.** See [`consumer`](crate::KafkaConsumer): offsets are stored only
//! over each partition's contiguous settled prefix and committed by librdkafka every
//! `auto.commit.interval.ms`, on every revoke and on close, so out-of-order acks never commit
//! past an unsettled message and a crash redelivers (at least once) instead of skipping.
//! After a rebalance, settles of deliveries from revoked partitions are ignored (their new owner
//! redelivers them). Redeliveries after a crash or rebalance carry attempt 1: Kafka does not
//! know they were delivered before; requeued copies carry the true count.
//!
//! **Requeue** re-produces the message to the queue's topic (never to a fanout exchange, which
//! would copy it to every bound queue) with attempt + 1, and settles the original once the copy
//! is confirmed; the copy goes behind messages sent meanwhile (see the consumer module docs).
//! A delayed requeue is `Unsupported` (the message comes back at once).
//!
//! **Topology** (see [`KafkaTopology`]): queue settings Kafka cannot store (dead-letter queue,
//! max attempts) and bindings are kept per cluster **in this process**; declare them at
//! start-up. `QueueSpec::partitions` sets the partition count (default `?partitions=3`) and
//! `QueueSpec::extra` passes topic configs. A dead letter without a dead-letter queue is
//! discarded with a warning, as in AMQP.
//!
//! **Transactions.** `Backend::transactional(queue, TransactionOptions::new(id))` opens a
//! [`KafkaTransactional`]: a consumer in group `queue` with automatic commits off and
//! `isolation.level=read_committed`, and a producer with `transactional.id` = `id`. `commit`
//! hands the transaction the offsets after the inputs received (`send_offsets_to_transaction`
//! with the consumer's group metadata, so a member that lost the partitions cannot commit them)
//! and commits: the outputs become visible and the inputs consumed at once. `abort`, and every
//! abortable failure (an output not delivered, the broker refusing the commit, an input partition
//! revoked mid-transaction), discards the outputs and seeks the inputs back, so the same unit
//! receives them again; the error is `Aborted` (temporary). Opening calls `init_transactions`
//! first: it aborts whatever transaction a previous holder of the id left open and fences that
//! holder, whose later calls fail with `Fenced` (permanent). A commit that times out has an
//! unknown outcome, so the unit stops with a permanent error and a new unit with the same id
//! settles it. The transactional calls block; they run on the blocking pool, each bounded by
//! `operation_timeout_ms`. `TransactionOptions::timeout` sets `transaction.timeout.ms`
//! (librdkafka's default 60 s, capped by the broker's `transaction.max.timeout.ms`): a unit that
//! dies mid-transaction and is not restarted holds up `read_committed` readers of the partitions
//! it wrote that long. A restarted instance gets its partitions back at once with static
//! membership (`?group.instance.id=NAME`, one name per instance) instead of after the 10 s
//! session timeout. tansu 0.6 has no transactions (its `commit_transaction` fails with
//! "EndTxnRequest not supported"): open it with `?transactions=false`.
//!
//! **Reading committed data.** librdkafka consumers default to `isolation.level=read_committed`
//! and mailroom keeps that default: a mailroom consumer never receives records of an aborted
//! transaction, and receives a committed transaction's records once it commits (each partition
//! is read only up to its oldest open transaction). `?isolation.level=read_uncommitted` receives
//! everything in the log, aborted records included (`tests/transactions.rs` shows both).
//!
//! **Partitioner.** Keys are mapped to partitions with murmur2, as the Java client does
//! ([`Partitioner::Murmur2Random`], librdkafka's `murmur2_random`), not librdkafka's own CRC32
//! default, so a mailroom service and a Java service writing one topic keep one order per key;
//! `?partitioner=` picks another ([`Partitioner`]).
//!
//! **Latency and throughput.** librdkafka's defaults, which mailroom keeps, favour throughput
//! by a few milliseconds; each is a URL property. Measured with `mailroom bench --url
//! 'kafka://127.0.0.1:9092?…' --workload bench/workloads/1-topic-1-partition-1kb.yaml --no-baseline`
//! (2,000 msgs/s of 1 KiB, one partition, Apache Kafka 4.1.1 on the same 2-core machine):
//!
//! | setting | default | buys | costs (measured: e2e p50 / p99) |
//! |---|---|---|---|
//! | `linger.ms` | 5 | fuller batches: fewer produce requests, more msgs/s at high rates | up to 5 ms per send at low rates (default 5.0 / 40.6 ms; `linger.ms=0` 1.4 / 60.7 ms; `linger.ms=20` 12.8 / 23.1 ms: fewer requests also shortened the tail here) |
//! | `batch.size`, `batch.num.messages` | 1 MB, 10,000 | the ceiling of one batch | memory per partition |
//! | `acks` | `all` (idempotence needs it) | a confirm means every in-sync replica has it | one replication round trip per batch (none on one node) |
//! | `enable.idempotence` | `true` | retries never duplicate or reorder a partition | nothing measurable; `false` only for brokers without it |
//! | `fetch.wait.max.ms` | 500 | the longest an idle fetch waits on the broker | no latency: with `fetch.min.bytes=1` (default) the broker answers as soon as data arrives (`fetch.wait.max.ms=100`: 5.1 / 62.8 ms, the same within noise) |
//! | `fetch.min.bytes` | 1 | fetches return at once | raising it batches fetches for throughput at up to `fetch.wait.max.ms` of latency |
//! | prefetch (`ConsumerOptions::prefetch`) | 1,000 | deliveries held unsettled per consumer | memory; a crash redelivers up to that many |
//! | `session.timeout.ms` | 10,000 | a crashed consumer's partitions move on after 10 s | a process frozen longer is taken out of the group |
//!
//! The p99 at this rate comes from the produce confirm (publish p99 39–57 ms in the same runs),
//! not from the consumer's fetch wait: on this shared 2-core machine the broker's JVM, the
//! benchmark and its consumer compete for CPU.
//!
//! **Failures.** `connect` waits at most `connect_timeout_ms` (default 10 s) for the cluster's
//! metadata, then fails with `Connection`; an invalid librdkafka property is a `Config` error
//! naming it; secrets (`sasl.password`, `ssl.key.password`, ...) never appear in `Debug` or errors.
//! Against a broker that goes silent or refuses connections (`tests/silent_peer.rs`): a send's
//! confirm, `flush` and producer or backend `close` end within `message.timeout.ms` (120 s by
//! default, the Java client's `delivery.timeout.ms`; librdkafka's own is 300 s), plus up to
//! `reconnect.backoff.max.ms` (10 s) while connections are refused, the send failing with a
//! temporary `Timeout` that hands the message back (its outcome is unknown: a request already on
//! the wire may still land); admin calls and consumer `close` end within `operation_timeout_ms`,
//! a close that cannot commit failing with `Timeout` while leaving the group goes on in the
//! background (what was not committed is delivered again); the backend works again once the
//! broker answers, without a new `connect`.

mod backend;
mod config;
mod consumer;
mod error;
mod offsets;
mod producer;
mod topology;
mod transaction;

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::{Backend, BackendFactory, Capabilities, Result};

pub use backend::KafkaBackend;
pub use config::{KafkaConfig, Partitioner, DEFAULT_MESSAGE_MAX_BYTES, FRAMING_RESERVE};
pub use consumer::KafkaConsumer;
pub use producer::{KafkaProducer, ATTEMPT_HEADER, ID_HEADER, TIMESTAMP_HEADER};
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
    caps.exchange_direct = false;
    caps.exchange_topic = false;
    caps.exchange_fanout = true;
    caps.exchange_headers = false;
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
    caps.max_message_size = Some(config.max_message_size());
    caps.max_batch_size = None;
    caps.max_headers = None;
    caps
}

/// Opens `kafka://` URLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct KafkaFactory;

#[async_trait]
impl BackendFactory for KafkaFactory {
    fn schemes(&self) -> &'static [&'static str] {
        &["kafka"]
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(KafkaBackend::from_url(url).await?))
    }
}
