//! Receiving through a consumer group: subscribing, replay, rebalances, prefetch and commits.
//!
//! **Commit strategy.** Offsets are never stored automatically (`enable.auto.offset.store=false`).
//! Each delivery is recorded in an [`OffsetBook`]; settling it (ack, or a nack once the requeued
//! copy or the dead letter is confirmed by the broker) lets the partition's commit position
//! advance over the *contiguous settled prefix* only, and the consumer hands that position to
//! librdkafka (`store_offsets`: before it waits for a record, at most every 10 ms while records
//! keep coming, on revoke and on close), which commits it every `auto.commit.interval.ms`, on
//! revoke and on close. An out-of-order ack therefore never commits past an unsettled message.
//!
//! **Requeue** (in `settle.rs`) is a retry path, not a seek: a nacked (or dropped) delivery is
//! produced again to the queue's own topic with `x-mailroom-attempt` = attempt + 1, and the
//! original counts as settled once that copy is confirmed. The copy keeps its key, so it lands
//! on the same partition, *behind* messages sent meanwhile: a requeue gives up the message's
//! place in the per-key order (as AMQP's requeue does under concurrency), while everything else
//! keeps it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt as _;
use mailroom_core::consumer::closed_consumer;
use mailroom_core::operation::{CLOSE, CONNECT, CONSUME, RECEIVE};
use mailroom_core::{
    Consumer, ConsumerOptions, Delivery, DeliveryInfo, Error, ErrorKind, Replay, Result,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use crate::codec::{decode_with, Decoded, PayloadArena};
use crate::config::KafkaConfig;
use crate::connection::Connection;
use crate::offsets::{OffsetBook, TopicPartition};
use crate::replay::replay_plan;
use crate::routing::RouteFilter;
use crate::settle::{KafkaSettle, SettleScope};
use crate::topology::validate_topic;
use crate::{error, BACKEND};

/// Rebalance callbacks: keep the offset book in step with the assignment, apply replay.
pub(crate) struct GroupContext {
    book: Arc<OffsetBook>,
    /// Where each partition starts (a replay), kept until the partition's first record
    /// arrives: a rebalance between the assignment and that record (the group's previous
    /// member leaving late) re-assigns the partition, and without the plan it would start at
    /// the committed offset, skipping the replay. Offsets by time are resolved when the
    /// consumer opens, so the callback makes no broker call and cannot fall back silently.
    replay: Mutex<HashMap<TopicPartition, Offset>>,
    /// Whether `replay` still has entries: lets `receive` skip its lock once the plan is done.
    replay_pending: AtomicBool,
}

impl GroupContext {
    /// A record of `tp` arrived: its replay, if any, has taken effect.
    fn replay_started(&self, tp: &TopicPartition) {
        if !self.replay_pending.load(Ordering::Relaxed) {
            return;
        }
        let mut plan = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        plan.remove(tp);
        if plan.is_empty() {
            self.replay_pending.store(false, Ordering::Relaxed);
        }
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::context::forward_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::context::forward_error(&error, reason);
    }
}

pub(crate) fn partitions_in(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
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
    /// librdkafka's rebalance, with the replay's start offsets written into the assignment
    /// itself. Re-assigning after the fact (in `post_rebalance`) made two assignments: the
    /// first, at the committed offsets, sent an offset fetch whose answer librdkafka kept as
    /// the partition's committed offset although the second assignment had replaced it (its
    /// `cgrp` debug log: "Ignoring OffsetFetch response ... no longer in the queried list").
    /// librdkafka commits a stored offset only above the committed one it knows, so a
    /// replay's progress below it was left out of the commits asked for on revoke and close.
    /// One assignment fetches nothing it does not use.
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr::{
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS as ASSIGN,
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS as REVOKE,
        };
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let done = match err {
            ASSIGN => {
                let tps = partitions_in(tpl);
                self.book.assign(&tps);
                self.start_replays(tpl);
                if cooperative {
                    base.incremental_assign(tpl)
                } else {
                    base.assign(tpl)
                }
            }
            REVOKE => {
                // Commit what is settled before the partitions go, so the next owner starts
                // there.
                store(base, &self.book);
                commit_now(base);
                self.book.revoke(&partitions_in(tpl));
                if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                }
            }
            other => {
                // librdkafka's own rebalance errors: it recovers by rejoining; dropping the
                // assignment (as rdkafka's default does) lets the next one start clean.
                tracing::warn!(error = ?other, "consumer group rebalance failed; rejoining");
                self.book.revoke(&partitions_in(tpl));
                if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                }
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "applying the rebalance failed");
        }
    }
}

impl GroupContext {
    /// Write the replay's start offsets into an assignment about to be applied.
    fn start_replays(&self, tpl: &mut TopicPartitionList) {
        if !self.replay_pending.load(Ordering::Relaxed) {
            return;
        }
        let plan = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        for ((topic, partition), offset) in plan.iter() {
            if tpl.find_partition(topic, *partition).is_some() {
                let _ = tpl.set_partition_offset(topic, *partition, *offset);
            }
        }
    }
}

/// Check that consumer-only properties are valid (called by `connect`).
pub(crate) fn check_consumer_config(config: &KafkaConfig) -> Result<()> {
    let cc = config.consumer_client_config("mailroom-config-check");
    let _: BaseConsumer = cc.create().map_err(|e| error::map(e, CONNECT))?;
    Ok(())
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
    scope: Arc<SettleScope>,
    /// The subscribed topics (the queue's first, then its bound exchanges'), a handful at
    /// most: a linear search by name is cheaper per record than hashing it.
    topics: Vec<Arc<str>>,
    prefetch: usize,
    timeout: Duration,
    /// When the settled prefix was last handed to librdkafka (see [`STORE_INTERVAL`]).
    stored: StoreClock,
    /// Which records of the bound exchanges' topics this queue takes (client-side routing).
    routes: RouteFilter,
    /// Where received payloads are copied to.
    payloads: PayloadArena,
}

/// How long, at most, settled offsets wait before they are handed to librdkafka while records
/// keep arriving; they are handed over at once whenever the consumer is about to wait, on a
/// revoke and on close. librdkafka commits what it holds every `auto.commit.interval.ms`
/// (5 s unless configured), so this delay is small beside it; handing them over per record
/// cost a partition list and a call into librdkafka per message, as much as the rest of
/// receiving one.
const STORE_INTERVAL: Duration = Duration::from_millis(10);

/// While records keep coming, the clock is read once per this many records: reading it cost
/// ~90 instructions per record, a tenth of what the rest of an ack costs. A store is then late
/// by at most this many records' time, small beside [`STORE_INTERVAL`] at any rate at which
/// records are ready back to back.
const RECORDS_PER_CLOCK_READ: u32 = 16;

/// When the settled offsets were last handed to librdkafka, read cheaply per record.
struct StoreClock {
    at: Instant,
    /// Records taken since the clock was last read.
    unread: u32,
}

impl StoreClock {
    fn new() -> Self {
        StoreClock {
            at: Instant::now(),
            unread: 0,
        }
    }

    /// The offsets were just handed over.
    fn reset(&mut self) {
        self.at = Instant::now();
        self.unread = 0;
    }

    /// A record was taken: whether [`STORE_INTERVAL`] has passed since the last store (read
    /// once per [`RECORDS_PER_CLOCK_READ`] records).
    fn due(&mut self) -> bool {
        self.unread += 1;
        if self.unread < RECORDS_PER_CLOCK_READ {
            return false;
        }
        self.unread = 0;
        self.at.elapsed() >= STORE_INTERVAL
    }
}

impl KafkaConsumer {
    pub(crate) async fn open(
        connection: Arc<Connection>,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<Self> {
        validate_topic("queue", queue).map_err(|e| e.with_operation(CONSUME))?;
        if let Some(Replay::Offset(o)) = options.replay {
            if o < 0 {
                return Err(Error::invalid_input(format!(
                    "replay offset {o} is negative; use Replay::Earliest or Replay::Latest"
                ))
                .with_backend(BACKEND)
                .with_operation(CONSUME));
            }
        }
        let mut topics = vec![queue.to_owned()];
        topics.extend(connection.declared.bound_exchanges(queue));
        let mut partitions: Vec<(String, Vec<i32>)> = Vec::new();
        for topic in &topics {
            match connection.partitions(topic).await? {
                Some(p) => partitions.push((topic.clone(), p)),
                None if topic == queue => {
                    return Err(Error::not_found(format!(
                        "queue '{queue}' does not exist; declare it first"
                    ))
                    .with_backend(BACKEND)
                    .with_operation(CONSUME))
                }
                None => tracing::warn!(queue, exchange = %topic, "bound exchange is gone"),
            }
        }
        let timeout = connection.config.operation_timeout;
        let plan = replay_plan(&connection, options.replay, &partitions).await?;
        let book = Arc::new(OffsetBook::default());
        let context = GroupContext {
            book: book.clone(),
            replay_pending: AtomicBool::new(!plan.is_empty()),
            replay: Mutex::new(plan),
        };
        let consumer: StreamConsumer<GroupContext> = connection
            .config
            .consumer_client_config(queue)
            .create_with_context(context)
            .map_err(|e| error::map(e, CONSUME))?;
        let names: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| error::map(e, CONSUME))?;
        let producer = connection.internal_producer()?;
        Ok(KafkaConsumer {
            consumer: Some(consumer),
            scope: Arc::new(SettleScope {
                book,
                producer,
                queue: Arc::from(queue),
                settings: connection.declared.queue_settings(queue),
            }),
            topics: partitions
                .iter()
                .map(|(t, _)| Arc::from(t.as_str()))
                .collect(),
            prefetch: options
                .prefetch
                .unwrap_or(connection.config.default_prefetch)
                .max(1) as usize,
            timeout,
            stored: StoreClock::new(),
            routes: RouteFilter::new(connection.declared.clone(), Arc::from(queue)),
            payloads: PayloadArena::default(),
        })
    }

    /// The subscribed topic's shared name (the record's own name when it is not one of them).
    fn topic_of(topics: &[Arc<str>], name: &str) -> Arc<str> {
        topics
            .iter()
            .find(|t| ***t == *name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }

    fn delivery(
        scope: &Arc<SettleScope>,
        topic: &Arc<str>,
        m: &BorrowedMessage<'_>,
        payloads: &mut PayloadArena,
    ) -> Delivery {
        let Decoded {
            message,
            attempt,
            routing_key,
        } = decode_with(m, Some(payloads));
        let partition = m.partition();
        let offset = m.offset();
        let mark = scope.book.delivered(topic, partition, offset);
        let info = DeliveryInfo {
            attempt,
            redelivered: attempt > 1,
            source: scope.queue.clone(),
            partition: Some(partition),
            offset: Some(offset),
            consumer_group: Some(scope.queue.clone()),
            routing_key: routing_key.map(Arc::from),
        };
        let settle = KafkaSettle {
            scope: scope.clone(),
            mark,
            offset,
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
                self.scope.queue, self.timeout
            ),
        )
        .with_backend(BACKEND)
        .with_operation(CLOSE)
    }
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

/// What became of one record (or error) taken from librdkafka.
enum Taken {
    /// A delivery for the application.
    Delivery(Delivery),
    /// A record no binding of the queue matches: settled without being delivered.
    Passed,
    /// An error librdkafka recovers from by itself: wait a little, then go on.
    Transient,
    /// An error the caller must see.
    Failed(Error),
}

impl KafkaConsumer {
    /// Turn what `consumer.recv` gave into a delivery, or say why there is none (the
    /// consumer's parts one by one: the record borrows the consumer while routing is updated).
    fn take(
        consumer: &StreamConsumer<GroupContext>,
        scope: &Arc<SettleScope>,
        topics: &[Arc<str>],
        routes: &mut RouteFilter,
        payloads: &mut PayloadArena,
        received: rdkafka::error::KafkaResult<BorrowedMessage<'_>>,
    ) -> Taken {
        match received {
            Ok(m) => {
                // The record's topic name is read from librdkafka (a C string, checked as
                // UTF-8) once per record, not once per use; not at all when only one topic is
                // subscribed (a queue without bound exchanges): the group assigns only
                // partitions of subscribed topics, and subscriptions are exact names.
                let named;
                let topic = match topics {
                    [only] => only,
                    _ => {
                        named = Self::topic_of(topics, m.topic());
                        &named
                    }
                };
                if consumer.context().replay_pending.load(Ordering::Relaxed) {
                    consumer
                        .context()
                        .replay_started(&(topic.clone(), m.partition()));
                }
                // The queue's own topic (the first subscribed) is all for the queue: only
                // records of bound exchanges go through the routing filter.
                let own = topics.first().is_some_and(|q| Arc::ptr_eq(q, topic));
                if own || routes.admits(&m) {
                    Taken::Delivery(Self::delivery(scope, topic, &m, payloads))
                } else {
                    scope.book.passed(topic, m.partition(), m.offset());
                    Taken::Passed
                }
            }
            Err(e) if is_moot(&e) => {
                tracing::debug!(error = %e, "transient consumer error");
                Taken::Transient
            }
            Err(e) => Taken::Failed(error::map(e, RECEIVE)),
        }
    }

    /// A delivery librdkafka already holds, taken without waiting; `None` when one would have
    /// to be waited for (the prefetch bound is reached, nothing is fetched, or a transient
    /// error was just reported). Settled offsets are handed to librdkafka at most every
    /// [`STORE_INTERVAL`] while records keep coming, and at once before `None` (the caller
    /// is about to wait).
    fn take_ready(&mut self) -> Option<Result<Delivery>> {
        loop {
            let Some(consumer) = self.consumer.as_ref() else {
                return Some(Err(closed_consumer(BACKEND)));
            };
            let book = &self.scope.book;
            if book.unsettled() >= self.prefetch {
                store(consumer, book);
                self.stored.reset();
                return None;
            }
            let Some(received) = consumer.recv().now_or_never() else {
                store(consumer, book);
                self.stored.reset();
                return None;
            };
            if self.stored.due() {
                store(consumer, book);
                self.stored.reset();
            }
            match Self::take(
                consumer,
                &self.scope,
                &self.topics,
                &mut self.routes,
                &mut self.payloads,
                received,
            ) {
                Taken::Delivery(d) => return Some(Ok(d)),
                Taken::Passed => continue,
                Taken::Transient => return None,
                Taken::Failed(e) => return Some(Err(e)),
            }
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            let Some(consumer) = self.consumer.as_ref() else {
                return Err(closed_consumer(BACKEND));
            };
            let book = &self.scope.book;
            // Taken before the checks below, so that a settle between them still wakes us.
            let settled = book.settled.notified();
            if book.unsettled() >= self.prefetch {
                store(consumer, book);
                self.stored.reset();
                settled.await;
                continue;
            }
            // A record librdkafka already fetched is taken without waiting (`take_ready`);
            // before waiting for one the settled offsets go to librdkafka at once, and a
            // settle while waiting stores them too. Nothing below awaits after a record is
            // taken, which keeps `receive` cancel-safe.
            let received = match consumer.recv().now_or_never() {
                Some(received) => {
                    if self.stored.due() {
                        store(consumer, book);
                        self.stored.reset();
                    }
                    received
                }
                None => {
                    store(consumer, book);
                    self.stored.reset();
                    tokio::select! {
                        biased;
                        received = consumer.recv() => received,
                        _ = settled => continue,
                    }
                }
            };
            match Self::take(
                consumer,
                &self.scope,
                &self.topics,
                &mut self.routes,
                &mut self.payloads,
                received,
            ) {
                Taken::Delivery(d) => return Ok(d),
                Taken::Passed => {}
                Taken::Transient => tokio::time::sleep(Duration::from_millis(50)).await,
                Taken::Failed(e) => return Err(e),
            }
        }
    }

    /// A ready delivery is returned without a timer or the boxed future of `receive`: the
    /// common case while a backlog drains.
    async fn receive_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>> {
        if let Some(ready) = self.take_ready() {
            return ready.map(Some);
        }
        match tokio::time::timeout(timeout, self.receive()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        self.take_ready()
    }

    async fn close(&mut self) -> Result<()> {
        let Some(consumer) = self.consumer.take() else {
            return Ok(());
        };
        // One bound for the whole close: the requeues in flight, the commit and the leave.
        let deadline = Instant::now() + self.timeout;
        while self.scope.book.requeues() > 0 && Instant::now() < deadline {
            let _ = tokio::time::timeout(
                Duration::from_millis(20),
                self.scope.book.settled.notified(),
            )
            .await;
        }
        let (done, finished) = tokio::sync::oneshot::channel();
        finish_in_background(consumer, self.scope.book.clone(), move || {
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
        while self.scope.book.requeues() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(consumer) = self.consumer.take() {
            let (done, finished) = std::sync::mpsc::sync_channel(1);
            finish_in_background(consumer, self.scope.book.clone(), move || {
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
            .field("queue", &self.scope.queue)
            .field("prefetch", &self.prefetch)
            .field("closed", &self.consumer.is_none())
            .finish()
    }
}
