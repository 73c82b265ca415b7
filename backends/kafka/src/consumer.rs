//! Receiving through a consumer group, and settling what was received.
//!
//! **Commit strategy.** Offsets are never stored automatically (`enable.auto.offset.store=false`).
//! Each delivery is recorded in an [`OffsetBook`]; settling it (ack, or a nack once the requeued
//! copy or the dead letter is confirmed by the broker) lets the partition's commit position
//! advance over the *contiguous settled prefix* only, and the consumer hands that position to
//! librdkafka (`store_offsets`), which commits it every `auto.commit.interval.ms`, on revoke and
//! on close. An out-of-order ack therefore never commits past an unsettled message.
//!
//! **Requeue** is a retry path, not a seek: a nacked (or dropped) delivery is produced again to
//! the queue's own topic with `x-mailroom-attempt` = attempt + 1, and the original counts as
//! settled once that copy is confirmed. The copy keeps its key, so it lands on the same
//! partition, *behind* messages sent meanwhile: a requeue gives up the message's place in the
//! per-key order (as AMQP's requeue does under concurrency), while everything else keeps it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use mailroom_core::consumer::closed_consumer;
use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::{
    Capability, Consumer, ConsumerOptions, Delivery, DeliveryInfo, Error, ErrorKind, Headers,
    Message, MessageId, MessageParts, Nack, Replay, Result, Settle, Timestamp,
};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use crate::backend::{blocking, Shared};
use crate::config::KafkaConfig;
use crate::offsets::{OffsetBook, Tp};
use crate::producer::{
    validate_topic, Completion, ProducerCore, ATTEMPT_HEADER, ID_HEADER, TIMESTAMP_HEADER,
};
use crate::topology::QueueMeta;
use crate::{error, BACKEND};

/// Where a partition starts on its first assignment to this consumer.
#[derive(Debug, Clone, Copy)]
enum ReplayAt {
    Offset(Offset),
    Time(i64),
}

/// Rebalance callbacks: keep the offset book in step with the assignment, apply replay.
pub(crate) struct GroupContext {
    book: Arc<OffsetBook>,
    replay: Mutex<HashMap<Tp, ReplayAt>>,
    timeout: Duration,
}

impl ClientContext for GroupContext {}

pub(crate) fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

/// Hand the settled prefixes to librdkafka (partitions no longer assigned are skipped by it).
fn store(consumer: &impl rdkafka::consumer::Consumer<GroupContext>, book: &OffsetBook) {
    let stores = book.take_stores();
    if stores.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(stores.len());
    for ((topic, partition), next) in &stores {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .is_err()
        {
            continue;
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // A revoked partition refuses the store; its new owner redelivers from the last commit.
        tracing::debug!(error = %e, "offsets not stored");
    }
}

fn commit_now(consumer: &impl rdkafka::consumer::Consumer<GroupContext>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed; uncommitted messages will be redelivered")
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is settled before the partitions go, so the next owner starts there.
            store(base, &self.book);
            commit_now(base);
            self.book.revoke(&tps_of(tpl));
        }
    }

    fn post_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let tps = tps_of(tpl);
        self.book.assign(&tps);
        let targets: Vec<(Tp, ReplayAt)> = {
            let mut plan = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            tps.iter()
                .filter_map(|tp| plan.remove(tp).map(|at| (tp.clone(), at)))
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        let mut times = TopicPartitionList::new();
        for ((topic, partition), at) in &targets {
            if let ReplayAt::Time(ms) = at {
                let _ = times.add_partition_offset(topic, *partition, Offset::Offset(*ms));
            }
        }
        let by_time = if times.count() > 0 {
            match base.offsets_for_times(times, self.timeout) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "replay by time failed; starting at committed offsets");
                    TopicPartitionList::new()
                }
            }
        } else {
            TopicPartitionList::new()
        };
        let mut start = TopicPartitionList::new();
        for e in tpl.elements() {
            let _ = start.add_partition_offset(e.topic(), e.partition(), e.offset());
        }
        for ((topic, partition), at) in &targets {
            let offset = match at {
                ReplayAt::Offset(o) => *o,
                ReplayAt::Time(_) => by_time
                    .find_partition(topic, *partition)
                    .map(|e| e.offset())
                    .unwrap_or(Offset::End),
            };
            let _ = start.set_partition_offset(topic, *partition, offset);
        }
        // Re-assigning with explicit offsets replaces the assignment just made.
        if let Err(e) = base.assign(&start) {
            tracing::warn!(error = %e, "replay assignment failed; starting at committed offsets");
        }
    }
}

/// Check that consumer-only properties are valid (called by `connect`).
pub(crate) fn check_consumer_config(config: &KafkaConfig) -> Result<()> {
    let cc = config.consumer_client_config("mailroom-config-check");
    let _: BaseConsumer = cc.create().map_err(|e| error::map(e, "connect"))?;
    Ok(())
}

/// What every delivery of one consumer needs to settle.
struct SettleCtx {
    book: Arc<OffsetBook>,
    producer: Arc<ProducerCore>,
    queue: Arc<str>,
    meta: QueueMeta,
}

/// A member of the consumer group named after the queue.
///
/// Several consumers of one queue share its partitions (competing consumers; at most one per
/// partition is busy). Dropping the consumer closes it: requeues in flight are awaited (bounded),
/// the settled prefix is committed and the group is left, blocking the dropping thread for that
/// long, at most `operation_timeout_ms` (then the leave goes on in the background) — call
/// [`Consumer::close`] to do it without blocking.
pub struct KafkaConsumer {
    consumer: Option<StreamConsumer<GroupContext>>,
    ctx: Arc<SettleCtx>,
    topics: HashMap<String, Arc<str>>,
    prefetch: usize,
    timeout: Duration,
}

impl KafkaConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<Self> {
        validate_topic("queue", queue).map_err(|e| e.with_operation("consume"))?;
        if options.replay.is_some() {
            shared
                .capabilities
                .require(Capability::Replay, BACKEND, "consume")?;
        }
        if let Some(Replay::Offset(o)) = options.replay {
            if o < 0 {
                return Err(Error::invalid_input(format!(
                    "replay offset {o} is negative; use Replay::Earliest or Replay::Latest"
                ))
                .with_backend(BACKEND)
                .with_operation("consume"));
            }
        }
        let mut topics = vec![queue.to_owned()];
        topics.extend(shared.registry.bound_exchanges(queue));
        let mut partitions: Vec<(String, Vec<i32>)> = Vec::new();
        for topic in &topics {
            match shared.partitions(topic).await? {
                Some(p) => partitions.push((topic.clone(), p)),
                None if topic == queue => {
                    return Err(Error::not_found(format!(
                        "queue '{queue}' does not exist; declare it first"
                    ))
                    .with_backend(BACKEND)
                    .with_operation("consume"))
                }
                None => tracing::warn!(queue, exchange = %topic, "bound exchange is gone"),
            }
        }
        let timeout = shared.config.operation_timeout;
        let plan = replay_plan(&shared, options.replay, &partitions).await?;
        let book = Arc::new(OffsetBook::default());
        let context = GroupContext {
            book: book.clone(),
            replay: Mutex::new(plan),
            timeout,
        };
        let consumer: StreamConsumer<GroupContext> = shared
            .config
            .consumer_client_config(queue)
            .create_with_context(context)
            .map_err(|e| error::map(e, "consume"))?;
        let names: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| error::map(e, "consume"))?;
        let producer = shared.internal_producer()?;
        Ok(KafkaConsumer {
            consumer: Some(consumer),
            ctx: Arc::new(SettleCtx {
                book,
                producer,
                queue: Arc::from(queue),
                meta: shared.registry.queue_meta(queue),
            }),
            topics: partitions
                .iter()
                .map(|(t, _)| (t.clone(), Arc::from(t.as_str())))
                .collect(),
            prefetch: options
                .prefetch
                .unwrap_or(shared.config.default_prefetch)
                .max(1) as usize,
            timeout,
        })
    }

    fn delivery(&self, m: &BorrowedMessage<'_>) -> Delivery {
        let topic = self
            .topics
            .get(m.topic())
            .cloned()
            .unwrap_or_else(|| Arc::from(m.topic()));
        let (message, attempt) = decode(m);
        let tp: Tp = (topic, m.partition());
        let offset = m.offset();
        let epoch = self.ctx.book.delivered(&tp, offset);
        let info = DeliveryInfo {
            attempt,
            redelivered: attempt > 1,
            source: self.ctx.queue.to_string(),
            partition: Some(tp.1),
            offset: Some(offset),
        };
        let settle = KafkaSettle {
            ctx: self.ctx.clone(),
            tp,
            offset,
            epoch,
            message: message.clone(),
            attempt,
        };
        Delivery::new(message, info, Box::new(settle))
    }

    fn close_timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "closing the consumer of '{}' did not finish within {:?} (the group coordinator \
                 does not answer): settled deliveries not committed yet are delivered again; \
                 leaving the group goes on in the background",
                self.ctx.queue, self.timeout
            ),
        )
        .with_backend(BACKEND)
        .with_operation("close")
    }
}

/// Resolve the replay option into a start offset per partition.
async fn replay_plan(
    shared: &Arc<Shared>,
    replay: Option<Replay>,
    partitions: &[(String, Vec<i32>)],
) -> Result<HashMap<Tp, ReplayAt>> {
    let Some(replay) = replay else {
        return Ok(HashMap::new());
    };
    let all: Vec<Tp> = partitions
        .iter()
        .flat_map(|(t, ps)| {
            let topic: Arc<str> = Arc::from(t.as_str());
            ps.iter().map(move |p| (topic.clone(), *p))
        })
        .collect();
    let at = |a: ReplayAt| all.iter().map(|tp| (tp.clone(), a)).collect();
    Ok(match replay {
        Replay::Earliest => at(ReplayAt::Offset(Offset::Beginning)),
        Replay::Offset(o) => at(ReplayAt::Offset(Offset::Offset(o))),
        Replay::Time(t) => at(ReplayAt::Time(t.as_millis() as i64)),
        Replay::Latest => {
            // The end *now*, so messages sent between this call and the group join still count.
            let shared = shared.clone();
            blocking(move || {
                let mut plan = HashMap::new();
                for tp in all {
                    let (_, high) = shared
                        .admin
                        .inner()
                        .fetch_watermarks(&tp.0, tp.1, shared.config.operation_timeout)
                        .map_err(|e| error::map(e, "consume"))?;
                    plan.insert(tp, ReplayAt::Offset(Offset::Offset(high)));
                }
                Ok(plan)
            })
            .await?
        }
    })
}

/// A Kafka record as a mailroom message, and its attempt (internal headers are stripped).
pub(crate) fn decode(m: &BorrowedMessage<'_>) -> (Message, u32) {
    let mut headers = Headers::new();
    let mut id = None;
    let mut timestamp = None;
    let mut attempt = 1u32;
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            match h.key {
                ID_HEADER => id = MessageId::parse(&value).ok(),
                TIMESTAMP_HEADER => timestamp = value.parse().ok().map(Timestamp::from_millis),
                ATTEMPT_HEADER => attempt = value.parse().unwrap_or(1).max(1),
                name => {
                    if let Err(e) = headers.insert(name, value) {
                        tracing::warn!(error = %e, "header of a received record dropped");
                    }
                }
            }
        }
    }
    let from_mailroom = id.is_some();
    let id = id.unwrap_or_else(|| {
        // Records from other producers get an id that is stable across redeliveries.
        MessageId::parse(&format!(
            "kafka:{}:{}:{}",
            m.topic(),
            m.partition(),
            m.offset()
        ))
        .unwrap_or_else(|_| MessageId::generate())
    });
    if !from_mailroom {
        timestamp = m
            .timestamp()
            .to_millis()
            .filter(|t| *t >= 0)
            .map(|t| Timestamp::from_millis(t as u64));
    }
    let message = Message::from_parts(MessageParts {
        id,
        key: m
            .key()
            .map(|k| Arc::from(String::from_utf8_lossy(k).as_ref())),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
        timestamp,
        delay: None,
    });
    (message, attempt)
}

pub(crate) fn is_moot(e: &KafkaError) -> bool {
    // Errors librdkafka recovers from by itself (it reconnects and refetches).
    matches!(
        e.rdkafka_error_code().map(error::kind_of_code),
        Some(
            mailroom_core::ErrorKind::Connection
                | mailroom_core::ErrorKind::Timeout
                | mailroom_core::ErrorKind::Broker
        )
    )
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            let Some(consumer) = self.consumer.as_ref() else {
                return Err(closed_consumer(BACKEND));
            };
            store(consumer, &self.ctx.book);
            let settled = self.ctx.book.settled.notified();
            if self.ctx.book.unsettled() >= self.prefetch {
                settled.await;
                continue;
            }
            // Nothing below awaits after a record is taken, which keeps `receive` cancel-safe.
            tokio::select! {
                _ = settled => continue,
                received = consumer.recv() => match received {
                    Ok(m) => return Ok(self.delivery(&m)),
                    Err(e) if is_moot(&e) => {
                        tracing::debug!(error = %e, "transient consumer error");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(error::map(e, "receive")),
                },
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        let Some(consumer) = self.consumer.take() else {
            return Ok(());
        };
        // One bound for the whole close: the requeues in flight, the commit and the leave.
        let deadline = Instant::now() + self.timeout;
        while self.ctx.book.requeues() > 0 && Instant::now() < deadline {
            let _ =
                tokio::time::timeout(Duration::from_millis(20), self.ctx.book.settled.notified())
                    .await;
        }
        let (done, finished) = tokio::sync::oneshot::channel();
        finish_in_background(consumer, self.ctx.book.clone(), move || {
            let _ = done.send(());
        });
        match tokio::time::timeout_at(deadline.into(), finished).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.close_timed_out()),
        }
    }
}

/// Store and commit the settled prefix, then leave the group (blocking: librdkafka's consumer
/// close waits for the group coordinator, however long it is unreachable).
fn finish(consumer: StreamConsumer<GroupContext>, book: &OffsetBook) {
    store(&consumer, book);
    commit_now(&consumer);
    // Later settles of this consumer's deliveries are moot: the next owner redelivers them.
    book.clear();
    drop(consumer);
}

/// [`finish`] on a thread of its own, then `done`, so that the caller can give up waiting
/// (a thread, not the blocking pool: a runtime shutting down waits for its blocking tasks).
fn finish_in_background(
    consumer: StreamConsumer<GroupContext>,
    book: Arc<OffsetBook>,
    done: impl FnOnce() + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("mailroom-kafka-close".into())
        .spawn(move || {
            finish(consumer, &book);
            done();
        });
    if let Err(e) = spawned {
        // The closure, consumer included, was dropped by the failed spawn, on this thread.
        tracing::warn!(error = %e, "no thread to close the consumer on; closed in place");
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if self.consumer.is_none() {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        while self.ctx.book.requeues() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(consumer) = self.consumer.take() {
            let (done, finished) = std::sync::mpsc::sync_channel(1);
            finish_in_background(consumer, self.ctx.book.clone(), move || {
                let _ = done.send(());
            });
            if finished
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                tracing::warn!(error = %self.close_timed_out(), "dropped consumer");
            }
        }
    }
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("queue", &self.ctx.queue)
            .field("prefetch", &self.prefetch)
            .field("closed", &self.consumer.is_none())
            .finish()
    }
}

/// Settles one delivery: commit position, requeue copy or dead letter.
struct KafkaSettle {
    ctx: Arc<SettleCtx>,
    tp: Tp,
    offset: i64,
    epoch: u64,
    message: Message,
    attempt: u32,
}

impl KafkaSettle {
    fn settle(&self) {
        self.ctx.book.settle(&self.tp, self.offset, self.epoch);
    }

    async fn requeue(self) -> Result<()> {
        if !self.ctx.book.is_current(&self.tp, self.epoch) {
            // The partition moved on; its new owner delivers the message again.
            return Ok(());
        }
        self.ctx.book.requeue_started();
        let sent = self
            .ctx
            .producer
            .send_confirmed(
                &self.ctx.queue,
                self.message.clone(),
                Some(self.attempt + 1),
            )
            .await;
        self.ctx.book.requeue_finished();
        sent.map_err(|e| e.with_operation("nack"))?;
        self.settle();
        Ok(())
    }

    async fn dead_letter(self, reason: &str) -> Result<()> {
        let Some(dlq) = self.ctx.meta.dead_letter_queue.clone() else {
            tracing::warn!(
                queue = %self.ctx.queue,
                id = %self.message.id(),
                reason,
                "message dead-lettered from a queue without a dead-letter queue: discarded"
            );
            self.settle();
            return Ok(());
        };
        let mut dead = self.message.clone();
        stamp_dead_letter(&mut dead, &self.ctx.queue, reason, self.attempt);
        self.ctx
            .producer
            .ensure_topic(&dlq)
            .await
            .map_err(|e| e.with_operation("nack"))?;
        self.ctx
            .producer
            .send_confirmed(&dlq, dead, None)
            .await
            .map_err(|e| e.with_operation("nack"))?;
        self.settle();
        Ok(())
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.settle();
        Ok(())
    }

    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay: Some(_) } => {
                let refused = self.ctx.producer.capabilities().require(
                    Capability::DelayedDelivery,
                    BACKEND,
                    "nack",
                );
                // Like a dropped delivery, the message comes back at once.
                self.abandon();
                refused
            }
            Nack::Requeue { delay: None } => match self.ctx.meta.max_delivery_attempts {
                Some(max) if self.attempt >= max => {
                    let reason = format!(
                        "rejected on attempt {}; the queue allows {max} delivery attempts",
                        self.attempt
                    );
                    self.dead_letter(&reason).await
                }
                _ => self.requeue().await,
            },
            Nack::DeadLetter { reason } => self.dead_letter(&reason).await,
        }
    }

    fn abandon(self: Box<Self>) {
        let KafkaSettle {
            ctx,
            tp,
            offset,
            epoch,
            message,
            attempt,
        } = *self;
        if !ctx.book.is_current(&tp, epoch) {
            return;
        }
        ctx.book.requeue_started();
        // Only the book: a callback holding the producer could drop its last handle on the
        // producer's own polling thread, which cannot join itself.
        let done = ctx.book.clone();
        let sent = ctx.producer.send_detached(
            &ctx.queue,
            message,
            Some(attempt + 1),
            Completion::Callback(Box::new(move |result| {
                match result {
                    Ok(_) => {
                        done.settle(&tp, offset, epoch);
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "requeue of a dropped delivery failed; it is redelivered after a restart"
                    ),
                }
                done.requeue_finished();
            })),
        );
        if !sent {
            ctx.book.requeue_finished();
            tracing::warn!(
                "requeue of a dropped delivery refused; it is redelivered after a restart"
            );
        }
    }
}
