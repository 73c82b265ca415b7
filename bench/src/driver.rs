//! What the harness drives: a topic with subscriptions, producers and consumers, as OMB's
//! `BenchmarkDriver` sees a broker.
//!
//! [`MailroomDriver`] runs every mailroom backend by URL through the traits; [`RawMpscDriver`]
//! is the floor (a bounded `tokio::sync::mpsc` per subscription). The raw-client baselines for
//! the other brokers (lapin, rdkafka, aws-sdk-sqs) are in [`super::raw`], behind the same cargo
//! features as their backends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use mailroom_core::{
    Backend, Binding, Capability, ConsumerOptions, Delivery, Destination, Error, ErrorKind,
    ExchangeKind, ExchangeSpec, Message, PendingConfirm, QueueSpec, Result, TryAck, TryEnqueue,
};

use super::workload::{KeyDistributor, Plan};

/// Header carrying the intended send time, in microseconds of the harness's monotonic clock.
pub const SENT_AT_HEADER: &str = "x-mailroom-bench-intended-us";

/// Microseconds since the first call in this process: a monotonic clock that producers and
/// consumers of one run share (they run in the same process), so end-to-end latency never
/// depends on a broker's timestamp or the wall clock.
pub fn now_us() -> u64 {
    now_ns() / 1_000
}

/// The [`now_us`] clock's reading at `at` (0 before the clock's origin): lets a caller that
/// already read the time stamp with it instead of reading the clock again.
pub fn us_at(at: Instant) -> u64 {
    ns_at(at) / 1_000
}

/// The [`now_us`] clock in nanoseconds: a producer keeps its schedule and its timestamps on
/// this line as plain integers, since each `Instant` subtraction (a checked `timespec`
/// difference) cost more per message than the channel it measures.
///
/// Read as the monotonic clock's raw nanoseconds (the clock `Instant` reads, through the vDSO)
/// minus the origin's: `Instant::now` and the `duration_since` that turns it into a number
/// cost about 80 instructions per reading (callgrind), read once per message on each side.
pub fn now_ns() -> u64 {
    #[cfg(unix)]
    {
        monotonic_ns().saturating_sub(origin().raw_ns)
    }
    #[cfg(not(unix))]
    {
        ns_at(Instant::now())
    }
}

/// The [`now_ns`] clock's reading at `at` (0 before the clock's origin).
pub fn ns_at(at: Instant) -> u64 {
    at.saturating_duration_since(origin().instant).as_nanos() as u64
}

/// The instant the [`now_ns`] clock reads `ns` at.
pub fn instant_at_ns(ns: u64) -> Instant {
    origin().instant + Duration::from_nanos(ns)
}

/// The clock's zero, as an `Instant` and as the monotonic clock's raw reading: both read
/// together, a few tens of nanoseconds apart, which is how far [`now_ns`] and [`ns_at`] of
/// the same moment can differ. The raw one is read first, so [`now_ns`] is never behind
/// [`ns_at`]: a wait that ends at an `Instant` has, read on the integer line, ended too.
struct Origin {
    raw_ns: u64,
    instant: Instant,
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        #[cfg(unix)]
        let raw_ns = monotonic_ns();
        #[cfg(not(unix))]
        let raw_ns = 0;
        Origin {
            raw_ns,
            instant: Instant::now(),
        }
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `std::time::Instant` reads on Unix.
#[cfg(unix)]
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// One topic of a run and its subscriptions.
#[derive(Debug, Clone)]
pub struct TopicPlan {
    /// The topic's name (fresh per run).
    pub name: String,
    /// Partitions.
    pub partitions: u32,
    /// The subscriptions' names (each gets every message).
    pub subscriptions: Vec<String>,
}

/// A message the harness sends.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The key, if the workload's key distributor gives one.
    pub key: Option<String>,
    /// The payload.
    pub payload: Bytes,
    /// The intended send time ([`now_us`]).
    pub intended_us: u64,
}

/// A message the harness received (and already settled).
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    /// The intended send time it carried, if it carried one.
    pub intended_us: Option<u64>,
    /// Payload bytes.
    pub bytes: usize,
}

/// Resolves when the broker confirmed a send.
pub type Confirm = BoxFuture<'static, Result<()>>;

/// What [`DriverProducer::try_send`] did.
pub enum TrySend {
    /// Sent and already confirmed.
    Confirmed,
    /// Sent; its confirm is still to come.
    Sent(Confirm),
    /// Refused (the error says why).
    Failed(Error),
    /// Sending would have to wait (or this driver has no synchronous path): the message back,
    /// for [`DriverProducer::send`].
    WouldBlock(Outgoing),
}

impl std::fmt::Debug for TrySend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrySend::Confirmed => f.write_str("Confirmed"),
            TrySend::Sent(_) => f.write_str("Sent(confirm to come)"),
            TrySend::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            TrySend::WouldBlock(message) => f.debug_tuple("WouldBlock").field(message).finish(),
        }
    }
}

/// A broker as the harness sees it.
#[async_trait]
pub trait Driver: Send + Sync {
    /// A short label for reports (`memory`, `rabbitmq`, `raw-mpsc`, ...).
    fn name(&self) -> String;
    /// The broker's implementation and version, as the broker reports it.
    async fn server_version(&self) -> String;
    /// `Ok` if this driver can run the workload as written, else a `Unsupported` error naming
    /// the workload file and the field it cannot express.
    fn check(&self, plan: &Plan) -> Result<()>;
    /// Create the topic and its subscriptions.
    async fn create(&self, topic: &TopicPlan) -> Result<()>;
    /// A producer on the topic.
    async fn producer(&self, topic: &TopicPlan) -> Result<Box<dyn DriverProducer>>;
    /// A consumer on one subscription of the topic.
    async fn consumer(
        &self,
        topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>>;
    /// Delete the topic and its subscriptions (best effort).
    async fn delete(&self, topic: &TopicPlan) -> Result<()>;
    /// Whether one partition (a queue) hands its messages out in the order they were sent.
    /// A backlog drain on such a broker is over once a message sent after the drain began
    /// arrives; otherwise only the backlog count can tell.
    fn delivers_in_order(&self) -> bool {
        false
    }
}

/// Sends for the harness.
#[async_trait]
pub trait DriverProducer: Send + Sync {
    /// Hand one message over; resolves once it is accepted (backpressure waits here) with the
    /// future of its confirm.
    async fn send(&self, message: Outgoing) -> Result<Confirm>;
    /// Send without waiting, where the driver can tell at once that the message is sent and
    /// confirmed; the harness tries this first and falls back to [`DriverProducer::send`].
    /// Spares a per-message boxed future where nothing has to wait. By default: never.
    fn try_send(&self, message: Outgoing) -> TrySend {
        TrySend::WouldBlock(message)
    }
    /// Flush and release.
    async fn close(&self) -> Result<()>;
}

/// Receives for the harness.
#[async_trait]
pub trait DriverConsumer: Send {
    /// The next message, settled (acked) before it is returned; `None` after `timeout`.
    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>>;
    /// A message already waiting, settled, without waiting for one; `None` when there is none
    /// (or this driver has no synchronous path: the default). The harness tries this first and
    /// falls back to [`DriverConsumer::receive`].
    fn try_receive(&mut self) -> Result<Option<Incoming>> {
        Ok(None)
    }
    /// Stop.
    async fn close(&mut self) -> Result<()>;
}

/// Every mailroom backend, through the traits.
pub struct MailroomDriver {
    backend: Arc<dyn Backend>,
}

impl MailroomDriver {
    /// Drive an opened backend.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        MailroomDriver { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Where a topic's producers send: with one subscription the topic is its queue, as OMB's
    /// drivers do for queue brokers; with several, a fanout exchange named after the topic.
    pub fn destination(topic: &TopicPlan) -> Destination {
        match topic.subscriptions.as_slice() {
            [only] => Destination::queue(only),
            _ => Destination::exchange(&topic.name, ""),
        }
    }
}

fn cannot_express(plan: &Plan, backend: &str, field: &str, why: String) -> Error {
    Error::unsupported(format!(
        "workload {}: field `{field}` cannot be expressed on {backend}: {why}",
        plan.source
    ))
}

#[async_trait]
impl Driver for MailroomDriver {
    fn delivers_in_order(&self) -> bool {
        self.backend.capabilities().per_key_ordering
    }

    fn name(&self) -> String {
        self.backend.name().to_owned()
    }

    async fn server_version(&self) -> String {
        self.backend
            .server_version()
            .await
            .unwrap_or_else(|e| format!("version unknown: {e}"))
    }

    fn check(&self, plan: &Plan) -> Result<()> {
        let name = self.backend.name();
        let caps = self.backend.capabilities();
        if plan.partitions > 1 && !caps.supports(Capability::PartitionedQueues) {
            return Err(cannot_express(
                plan,
                name,
                "partitionsPerTopic",
                format!(
                    "{} partitions asked, but {name} queues are not partitioned (it declares no partitioned_queues; OMB's RabbitMQ driver rejects this too); use 1",
                    plan.partitions
                ),
            ));
        }
        if plan.subscriptions > 1 && !caps.supports(Capability::Exchange(ExchangeKind::Fanout)) {
            return Err(cannot_express(
                plan,
                name,
                "subscriptionsPerTopic",
                format!(
                    "{} subscriptions need a fanout exchange, and {name} declares no exchange_fanout",
                    plan.subscriptions
                ),
            ));
        }
        if plan.consumers > 1 && !caps.supports(Capability::CompetingConsumers) {
            return Err(cannot_express(
                plan,
                name,
                "consumerPerSubscription",
                format!(
                    "{} consumers on one subscription need competing_consumers, which {name} does not declare",
                    plan.consumers
                ),
            ));
        }
        if let Some(max) = caps.max_message_size {
            // The payload plus the harness's timestamp header and a key must fit.
            let needed = plan.message_size() + SENT_AT_HEADER.len() + 64;
            if needed > max {
                return Err(cannot_express(
                    plan,
                    name,
                    if plan.workload.payload_file.is_some() {
                        "payloadFile"
                    } else {
                        "messageSize"
                    },
                    format!(
                        "{} bytes plus the timestamp header exceed {name}'s max_message_size of {max}",
                        plan.message_size()
                    ),
                ));
            }
        }
        if plan.workload.key_distributor != KeyDistributor::NoKey
            && plan.partitions > 1
            && !caps.per_key_ordering
        {
            return Err(cannot_express(
                plan,
                name,
                "keyDistributor",
                format!("keys spread messages over partitions, which {name} does not have"),
            ));
        }
        Ok(())
    }

    async fn create(&self, topic: &TopicPlan) -> Result<()> {
        let topology = self.backend.topology();
        let queue = |name: &str| {
            let spec = QueueSpec::new(name);
            if topic.partitions > 1 {
                spec.partitions(topic.partitions)
            } else {
                spec
            }
        };
        if let [only] = topic.subscriptions.as_slice() {
            return topology.declare_queue(&queue(only)).await;
        }
        topology
            .declare_exchange(&ExchangeSpec::new(&topic.name, ExchangeKind::Fanout))
            .await?;
        for sub in &topic.subscriptions {
            topology.declare_queue(&queue(sub)).await?;
            topology.bind(&Binding::fanout(&topic.name, sub)).await?;
        }
        Ok(())
    }

    async fn producer(&self, topic: &TopicPlan) -> Result<Box<dyn DriverProducer>> {
        Ok(Box::new(MailroomProducer {
            producer: self.backend.producer().await?,
            destination: MailroomDriver::destination(topic),
        }))
    }

    async fn consumer(
        &self,
        _topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>> {
        Ok(Box::new(MailroomConsumer {
            unacked: None,
            consumer: self
                .backend
                .consumer(subscription, ConsumerOptions::default())
                .await?,
        }))
    }

    async fn delete(&self, topic: &TopicPlan) -> Result<()> {
        let topology = self.backend.topology();
        let mut first_error = None;
        for sub in &topic.subscriptions {
            if let Err(e) = topology.delete_queue(sub).await {
                first_error.get_or_insert(e);
            }
        }
        if topic.subscriptions.len() > 1 {
            if let Err(e) = topology.delete_exchange(&topic.name).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

struct MailroomProducer {
    producer: Box<dyn mailroom_core::Producer>,
    destination: Destination,
}

/// The message the harness's `message` becomes: its payload and key, and the intended send
/// time in the sent-at header.
fn mailroom_message(message: Outgoing) -> Result<Message> {
    let mut digits = [0u8; 20];
    let mut builder = Message::builder(message.payload)
        .header(SENT_AT_HEADER, decimal(message.intended_us, &mut digits));
    if let Some(key) = message.key {
        builder = builder.key(key);
    }
    builder.build()
}

fn confirm_of(pending: PendingConfirm) -> Confirm {
    pending.map(|r| r.map(|_| ())).boxed()
}

#[async_trait]
impl DriverProducer for MailroomProducer {
    async fn send(&self, message: Outgoing) -> Result<Confirm> {
        let message = mailroom_message(message)?;
        let pending = self.producer.enqueue(&self.destination, message).await?;
        Ok(confirm_of(pending))
    }

    /// What an application sending as fast as it can does: `Producer::try_enqueue`, no boxed
    /// future per message where the producer takes it at once.
    fn try_send(&self, message: Outgoing) -> TrySend {
        let intended_us = message.intended_us;
        let message = match mailroom_message(message) {
            Ok(message) => message,
            Err(e) => return TrySend::Failed(e),
        };
        match self.producer.try_enqueue(&self.destination, message) {
            TryEnqueue::Done(Ok(mut pending)) => match pending.take_if_ready() {
                Some(Ok(_)) => TrySend::Confirmed,
                Some(Err(e)) => TrySend::Failed(e),
                None => TrySend::Sent(confirm_of(pending)),
            },
            TryEnqueue::Done(Err(e)) => TrySend::Failed(e),
            // Rare (a full queue): the message is rebuilt for `send`, with a new id.
            TryEnqueue::Wait(message) => TrySend::WouldBlock(Outgoing {
                key: message.key().map(str::to_owned),
                payload: message.payload().clone(),
                intended_us,
            }),
        }
    }

    async fn close(&self) -> Result<()> {
        self.producer.close().await
    }
}

/// `value` in decimal, written into `buf` (20 digits hold any `u64`): the sent-at header of
/// every message, without `to_string`'s formatting machinery.
fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

struct MailroomConsumer {
    consumer: Box<dyn mailroom_core::Consumer>,
    /// A delivery `try_receive` took whose ack has to wait for the broker: `receive` acks it
    /// and returns it before taking another.
    unacked: Option<(Delivery, Incoming)>,
}

impl MailroomConsumer {
    fn incoming(delivery: &Delivery) -> Incoming {
        let message = delivery.message();
        Incoming {
            intended_us: message
                .headers()
                .get(SENT_AT_HEADER)
                .and_then(|v| v.parse().ok()),
            bytes: message.payload().len(),
        }
    }
}

#[async_trait]
impl DriverConsumer for MailroomConsumer {
    /// What an application draining a backlog does: a ready delivery through
    /// `Consumer::try_receive` and `Delivery::try_ack`, no future or timer per message.
    fn try_receive(&mut self) -> Result<Option<Incoming>> {
        if self.unacked.is_some() {
            return Ok(None);
        }
        let Some(received) = self.consumer.try_receive() else {
            return Ok(None);
        };
        let delivery = received?;
        let incoming = Self::incoming(&delivery);
        match delivery.try_ack() {
            TryAck::Done(acked) => acked.map(|()| Some(incoming)),
            TryAck::Wait(delivery) => {
                self.unacked = Some((delivery, incoming));
                Ok(None)
            }
        }
    }

    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        if let Some((delivery, incoming)) = self.unacked.take() {
            delivery.ack().await?;
            return Ok(Some(incoming));
        }
        let Some(delivery) = self.consumer.receive_timeout(timeout).await? else {
            return Ok(None);
        };
        let incoming = Self::incoming(&delivery);
        delivery.ack().await?;
        Ok(Some(incoming))
    }

    async fn close(&mut self) -> Result<()> {
        // A delivery taken but not acked goes back to the broker with the consumer.
        self.unacked = None;
        self.consumer.close().await
    }
}

/// Capacity of each raw mpsc subscription channel (the memory backend's bench queue bound).
pub const RAW_MPSC_CAPACITY: usize = 1024;

type RawMessage = (u64, Bytes);
type RawReceiver = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<RawMessage>>>;
type RawSubscription = (String, tokio::sync::mpsc::Sender<RawMessage>, RawReceiver);

/// The floor: one bounded `tokio::sync::mpsc` channel per subscription, a send "confirmed"
/// once it is in every subscription's channel, consumers of one subscription sharing its
/// receiver. No broker, no abstraction: what is left is the harness itself.
#[derive(Default)]
pub struct RawMpscDriver {
    topics: Mutex<HashMap<String, Vec<RawSubscription>>>,
}

impl RawMpscDriver {
    /// A driver with no topics yet.
    pub fn new() -> Self {
        RawMpscDriver::default()
    }

    fn lookup(&self, topic: &str) -> Result<Vec<RawSubscription>> {
        let topics = self
            .topics
            .lock()
            .map_err(|_| Error::new(ErrorKind::Broker, "raw mpsc driver lock poisoned"))?;
        topics
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no raw topic '{topic}'")))
    }
}

#[async_trait]
impl Driver for RawMpscDriver {
    fn delivers_in_order(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        "raw-mpsc".to_owned()
    }

    async fn server_version(&self) -> String {
        format!("tokio::sync::mpsc (capacity {RAW_MPSC_CAPACITY}), in process")
    }

    fn check(&self, plan: &Plan) -> Result<()> {
        let size = plan.message_size().max(1) as u64;
        if plan.backlog_bytes / size > RAW_MPSC_CAPACITY as u64 {
            return Err(Error::unsupported(format!(
                "workload {}: field `consumerBacklogSizeGB` cannot be expressed on raw-mpsc: a backlog of {} messages does not fit its {RAW_MPSC_CAPACITY}-message channel",
                plan.source,
                plan.backlog_bytes / size
            )));
        }
        Ok(())
    }

    async fn create(&self, topic: &TopicPlan) -> Result<()> {
        let subs = topic
            .subscriptions
            .iter()
            .map(|s| {
                let (tx, rx) = tokio::sync::mpsc::channel(RAW_MPSC_CAPACITY);
                (s.clone(), tx, Arc::new(tokio::sync::Mutex::new(rx)))
            })
            .collect();
        self.topics
            .lock()
            .map_err(|_| Error::new(ErrorKind::Broker, "raw mpsc driver lock poisoned"))?
            .insert(topic.name.clone(), subs);
        Ok(())
    }

    async fn producer(&self, topic: &TopicPlan) -> Result<Box<dyn DriverProducer>> {
        let senders = self
            .lookup(&topic.name)?
            .into_iter()
            .map(|(_, tx, _)| tx)
            .collect();
        Ok(Box::new(RawMpscProducer { senders }))
    }

    async fn consumer(
        &self,
        topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>> {
        let receiver = self
            .lookup(&topic.name)?
            .into_iter()
            .find(|(s, _, _)| s == subscription)
            .map(|(_, _, rx)| rx)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no raw subscription '{subscription}'"),
                )
            })?;
        Ok(Box::new(RawMpscConsumer {
            receiver,
            held: None,
            turn: 0,
            idle: None,
        }))
    }

    async fn delete(&self, topic: &TopicPlan) -> Result<()> {
        if let Ok(mut topics) = self.topics.lock() {
            topics.remove(&topic.name);
        }
        Ok(())
    }
}

struct RawMpscProducer {
    senders: Vec<tokio::sync::mpsc::Sender<RawMessage>>,
}

#[async_trait]
impl DriverProducer for RawMpscProducer {
    fn try_send(&self, message: Outgoing) -> TrySend {
        use tokio::sync::mpsc::error::TrySendError;
        // One subscription: one channel, all or nothing. Several would need all-or-nothing
        // across channels: they take the async path.
        let [only] = self.senders.as_slice() else {
            return TrySend::WouldBlock(message);
        };
        match only.try_send((message.intended_us, message.payload)) {
            Ok(()) => TrySend::Confirmed,
            Err(TrySendError::Full((intended_us, payload))) => TrySend::WouldBlock(Outgoing {
                key: message.key,
                payload,
                intended_us,
            }),
            Err(TrySendError::Closed(_)) => {
                TrySend::Failed(Error::closed("raw mpsc channel closed"))
            }
        }
    }

    async fn send(&self, message: Outgoing) -> Result<Confirm> {
        for tx in &self.senders {
            tx.send((message.intended_us, message.payload.clone()))
                .await
                .map_err(|_| Error::closed("raw mpsc channel closed"))?;
        }
        Ok(futures_util::future::ready(Ok(())).boxed())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Messages a consumer takes in a row, holding its subscription's receiver, before it lets a
/// competing consumer of the same subscription have a turn.
const RAW_MPSC_TURN: u32 = 64;

struct RawMpscConsumer {
    receiver: RawReceiver,
    /// The receiver, held between receives while messages keep coming: locking a
    /// `tokio::sync::Mutex` per message would cost more than the channel itself.
    held: Option<tokio::sync::OwnedMutexGuard<tokio::sync::mpsc::Receiver<RawMessage>>>,
    turn: u32,
    /// The deadline of the current wait for a message, kept across receives and re-armed only
    /// once it passed: registering a fresh timer for every wait on a channel that is often
    /// empty for a moment would cost more than the channel.
    idle: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

fn raw_incoming((intended_us, payload): RawMessage) -> Incoming {
    Incoming {
        intended_us: Some(intended_us),
        bytes: std::hint::black_box(payload).len(),
    }
}

impl RawMpscConsumer {
    /// Hand the receiver back to the other consumers once this one had its turn.
    fn took_one(&mut self) {
        self.turn += 1;
        if self.turn >= RAW_MPSC_TURN {
            self.turn = 0;
            self.held = None;
        }
    }
}

#[async_trait]
impl DriverConsumer for RawMpscConsumer {
    fn try_receive(&mut self) -> Result<Option<Incoming>> {
        use tokio::sync::mpsc::error::TryRecvError;
        if self.held.is_none() {
            self.held = self.receiver.clone().try_lock_owned().ok();
        }
        let Some(rx) = self.held.as_mut() else {
            return Ok(None);
        };
        match rx.try_recv() {
            Ok(message) => {
                self.took_one();
                Ok(Some(raw_incoming(message)))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::closed("raw mpsc channel closed")),
        }
    }

    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if idle.is_elapsed() {
            idle.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
        let rx = match self.held.as_mut() {
            Some(rx) => rx,
            None => tokio::select! {
                biased;
                guard = self.receiver.clone().lock_owned() => self.held.insert(guard),
                () = idle.as_mut() => return Ok(None),
            },
        };
        // `None` at the latest `timeout` after the wait was armed: possibly sooner than
        // `timeout` after this call, which only means the harness asks again.
        let received = tokio::select! {
            biased;
            received = rx.recv() => Some(received),
            () = idle.as_mut() => None,
        };
        match received {
            Some(Some(message)) => {
                self.took_one();
                Ok(Some(raw_incoming(message)))
            }
            Some(None) => Err(Error::closed("raw mpsc channel closed")),
            None => {
                // The channel stayed dry: let a competing consumer wait on it next.
                self.held = None;
                self.turn = 0;
                Ok(None)
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integer_clock_reads_what_instant_reads() {
        for _ in 0..1000 {
            let before = ns_at(Instant::now());
            let now = now_ns();
            let after = ns_at(Instant::now());
            // Never behind the Instant line; ahead by the origins' gap at most (tens of ns,
            // more on a preempted thread).
            assert!(now >= before, "{now} ns read after {before} ns");
            assert!(now <= after + 50_000, "{now} ns read before {after} ns");
        }
        let a = now_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = now_ns();
        assert!(b - a >= 2_000_000, "2 ms slept, {} ns passed", b - a);
    }

    #[test]
    fn decimal_writes_what_to_string_does() {
        let mut buf = [0u8; 20];
        for v in [
            0,
            1,
            9,
            10,
            99,
            100,
            1_234_567,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(decimal(v, &mut buf), v.to_string());
        }
    }
}
