//! Sending: records handed to librdkafka (encoded by `codec.rs`), confirmed by its delivery
//! reports, within an in-flight window.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::operation::{PRODUCER, SEND};
use mailroom_core::{
    Capabilities, Capability, Destination, Error, ErrorKind, Message, MessageId, PendingConfirm,
    Producer, Receipt, Result,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::codec::{self, Stamps};
use crate::config::KafkaConfig;
use crate::topology::validate_topic;
use crate::{error, BACKEND};

/// What happens when a record's delivery report arrives.
pub(crate) enum Completion {
    /// Resolve a pending confirm.
    Channel(oneshot::Sender<Result<Receipt>>),
    /// Run a callback on librdkafka's polling thread (used by requeues that nobody awaits).
    Callback(Box<dyn FnOnce(Result<Receipt>) + Send + Sync>),
}

/// A record handed to librdkafka and not yet reported.
///
/// It does not hold the message: the message is dropped on the sending thread as soon as
/// librdkafka has copied it, and a failed record is decoded back into the message its error
/// returns. Whatever the sending thread allocates and librdkafka's polling thread frees lands in
/// glibc's fast bins, and every allocation of 1 KiB or more (librdkafka's copy of each record)
/// then first consolidates them: holding the message here made mailroom's producer spend more
/// CPU per record in `malloc` than raw rdkafka spends in all.
pub(crate) struct InFlight {
    id: MessageId,
    completion: Completion,
    _permit: Option<OwnedSemaphorePermit>,
}

/// What became of a record handed to librdkafka without waiting.
enum Sent {
    /// librdkafka took it.
    Handed,
    /// Refused for good.
    Failed(Error),
    /// librdkafka's queue is full: the message and its in-flight entry, to try again.
    QueueFull(Message, Box<InFlight>),
}

/// Routes delivery reports to their waiters.
pub(crate) struct ReportContext {
    /// Whether the broker answers each record (`acks` is not 0), so a report's offset is the
    /// record's place in the log. Under `acks=0` librdkafka reports an offset the broker never
    /// gave, which a receipt must not claim.
    broker_answers: bool,
}

impl ClientContext for ReportContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::context::forward_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::context::forward_error(&error, reason);
    }
}

impl ProducerContext for ReportContext {
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let InFlight {
            id,
            completion,
            _permit,
        } = *opaque;
        let outcome = match result {
            Ok(m) => {
                use rdkafka::Message as _;
                Ok(Receipt {
                    id,
                    partition: Some(m.partition()),
                    offset: (self.broker_answers && m.offset() >= 0).then_some(m.offset()),
                })
            }
            // The record carries everything the message had (id and timestamp in headers).
            Err((e, record)) => {
                let message = codec::decode(record).message;
                Err(error::map(e.clone(), SEND).with_undelivered(message))
            }
        };
        match completion {
            // The waiter may have dropped its confirm; the message was still sent.
            Completion::Channel(tx) => drop(tx.send(outcome)),
            Completion::Callback(f) => f(outcome),
        }
        // The permit drops here, opening the window for the next enqueue.
    }
}

/// The shared part of a producer: the librdkafka client, the in-flight window, the topic cache.
pub(crate) struct ProducerCore {
    producer: ThreadedProducer<ReportContext>,
    window: Arc<Semaphore>,
    window_size: u32,
    capabilities: Capabilities,
    /// Topics known to exist, so that a send to a missing topic fails at once with `NotFound`
    /// instead of after librdkafka's 30 s metadata propagation wait.
    known_topics: RwLock<HashSet<String>>,
    timeout: Duration,
}

impl ProducerCore {
    pub(crate) fn new(config: &KafkaConfig, capabilities: Capabilities) -> Result<Arc<Self>> {
        Self::with_client_config(&config.producer_client_config(), config, capabilities)
    }

    /// A producer made from `cc` (a transactional producer's configuration, say), with the
    /// window and timeouts `config` sets.
    pub(crate) fn with_client_config(
        cc: &rdkafka::ClientConfig,
        config: &KafkaConfig,
        capabilities: Capabilities,
    ) -> Result<Arc<Self>> {
        let producer: ThreadedProducer<ReportContext> = cc
            .create_with_context(ReportContext {
                broker_answers: cc.get("acks") != Some("0"),
            })
            .map_err(|e| error::map(e, PRODUCER))?;
        let window_size = config.max_in_flight() as u32;
        Ok(Arc::new(ProducerCore {
            producer,
            window: Arc::new(Semaphore::new(window_size as usize)),
            window_size,
            capabilities,
            known_topics: RwLock::new(HashSet::new()),
            timeout: config.operation_timeout,
        }))
    }

    /// The capabilities it checks messages against.
    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The librdkafka producer, for the transactional calls.
    pub(crate) fn client(&self) -> &ThreadedProducer<ReportContext> {
        &self.producer
    }

    /// Whether `topic` is known to exist (it was checked, and its name validated, before).
    fn knows(&self, topic: &str) -> bool {
        self.known_topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    /// `NotFound` unless the topic exists (asked once per topic, then remembered).
    pub(crate) async fn ensure_topic(self: &Arc<Self>, topic: &str) -> Result<()> {
        if self.knows(topic) {
            return Ok(());
        }
        let core = self.clone();
        let name = topic.to_owned();
        let exists = tokio::task::spawn_blocking(move || {
            crate::connection::topic_partitions(core.producer.client(), &name, core.timeout)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Broker, format!("metadata task failed: {e}")))??;
        if exists.is_none() {
            return Err(Error::not_found(format!(
                "topic '{topic}' does not exist; declare the queue (or exchange) first"
            ))
            .with_backend(BACKEND)
            .with_operation(SEND));
        }
        self.known_topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    /// Forget a topic (it was deleted through this backend).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.known_topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// Hand a record to librdkafka without waiting; on failure the in-flight entry comes back.
    fn try_send(
        &self,
        topic: &str,
        message: &Message,
        inflight: Box<InFlight>,
        stamps: Stamps<'_>,
    ) -> std::result::Result<(), (KafkaError, Box<InFlight>)> {
        let record = codec::encode(message, stamps);
        let mut base = BaseRecord::with_opaque_to(topic, inflight)
            .payload(record.payload)
            .headers(record.headers);
        if let Some(k) = record.key {
            base = base.key(k);
        }
        if let Some(ts) = record.timestamp {
            base = base.timestamp(ts);
        }
        self.producer
            .send(base)
            .map_err(|(e, record)| (e, record.delivery_opaque))
    }

    /// Send `message` to `topic` (which must exist), waiting for room in librdkafka's queue.
    pub(crate) async fn send(
        &self,
        topic: &str,
        message: Message,
        stamps: Stamps<'_>,
        completion: Completion,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<()> {
        let (message, inflight) = match self.send_now(topic, message, stamps, completion, permit) {
            Sent::Handed => return Ok(()),
            Sent::Failed(e) => return Err(e),
            Sent::QueueFull(message, inflight) => (message, inflight),
        };
        // The rare wait for room is a future of its own, boxed, so that every send's future
        // (boxed per message by `async_trait`) does not carry a timer's worth of state.
        Box::pin(self.send_when_room(topic, message, inflight, stamps)).await
    }

    /// Hand the record to librdkafka at once, if its queue has room.
    fn send_now(
        &self,
        topic: &str,
        message: Message,
        stamps: Stamps<'_>,
        completion: Completion,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Sent {
        if let Err(e) = codec::check(&message) {
            return Sent::Failed(
                e.with_backend(BACKEND)
                    .with_operation(SEND)
                    .with_undelivered(message),
            );
        }
        let inflight = Box::new(InFlight {
            id: message.id().clone(),
            completion,
            _permit: permit,
        });
        match self.try_send(topic, &message, inflight, stamps) {
            // librdkafka copied the record; the message is dropped here, on this thread.
            Ok(()) => Sent::Handed,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                Sent::QueueFull(message, back)
            }
            Err((e, _)) => Sent::Failed(error::map(e, SEND).with_undelivered(message)),
        }
    }

    /// Retry a record librdkafka's queue had no room for until it has.
    async fn send_when_room(
        &self,
        topic: &str,
        message: Message,
        mut inflight: Box<InFlight>,
        stamps: Stamps<'_>,
    ) -> Result<()> {
        loop {
            // Only reachable when queue.buffering.max.kbytes binds before the window.
            tokio::time::sleep(Duration::from_millis(5)).await;
            match self.try_send(topic, &message, inflight, stamps) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    inflight = back;
                }
                Err((e, _)) => {
                    return Err(error::map(e, SEND).with_undelivered(message));
                }
            }
        }
    }

    /// Send without awaiting anything (for `Settle::abandon`); the completion runs on the
    /// report. Returns false, without sending, if librdkafka refused the record at once.
    pub(crate) fn send_detached(
        &self,
        topic: &str,
        message: Message,
        attempt: Option<u32>,
        completion: Completion,
    ) -> bool {
        if codec::check(&message).is_err() {
            return false;
        }
        let permit = self.window.clone().try_acquire_owned().ok();
        let inflight = Box::new(InFlight {
            id: message.id().clone(),
            completion,
            _permit: permit,
        });
        self.try_send(topic, &message, inflight, Stamps::attempt(attempt))
            .is_ok()
    }

    /// Send and wait for the delivery report.
    pub(crate) async fn send_confirmed(
        &self,
        topic: &str,
        message: Message,
        attempt: Option<u32>,
    ) -> Result<Receipt> {
        let permit = self.acquire().await?;
        let (tx, rx) = oneshot::channel();
        self.send(
            topic,
            message,
            Stamps::attempt(attempt),
            Completion::Channel(tx),
            Some(permit),
        )
        .await?;
        rx.await.unwrap_or_else(|_| Err(lost_report()))
    }

    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit> {
        // A free slot is taken without building the semaphore's wait future.
        if let Ok(permit) = self.window.clone().try_acquire_owned() {
            return Ok(permit);
        }
        self.window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::closed("producer is closed").with_backend(BACKEND))
    }

    /// Wait until every record sent so far has its delivery report.
    pub(crate) async fn flush_all(&self) -> Result<()> {
        let all = self
            .window
            .acquire_many(self.window_size)
            .await
            .map_err(|_| Error::closed("producer is closed").with_backend(BACKEND))?;
        drop(all);
        Ok(())
    }

    /// Wait (at most the operation timeout) until librdkafka holds no record at all, those
    /// sent without a window slot (`send_detached` when the window is full) included, which
    /// [`ProducerCore::flush_all`] cannot see.
    pub(crate) async fn flush_everything(self: &Arc<Self>) -> Result<()> {
        self.flush_all().await?;
        let core = self.clone();
        crate::connection::blocking(move || {
            core.producer
                .flush(core.timeout)
                .map_err(|e| error::map(e, "flush"))
        })
        .await
    }
}

pub(crate) fn lost_report() -> Error {
    Error::closed("the producer went away before the delivery report arrived")
        .with_backend(BACKEND)
        .with_operation(SEND)
}

/// A Kafka producer: one librdkafka producer, idempotent unless configured otherwise.
///
/// `enqueue` waits for room in the in-flight window (librdkafka's `queue.buffering.max.messages`)
/// and hands the record to librdkafka, which batches by `linger.ms` / `batch.size`; the pending
/// confirm resolves on the record's delivery report.
pub struct KafkaProducer {
    core: Arc<ProducerCore>,
    closed: AtomicBool,
}

impl KafkaProducer {
    pub(crate) fn new(core: Arc<ProducerCore>) -> Self {
        KafkaProducer {
            core,
            closed: AtomicBool::new(false),
        }
    }

    fn check(&self, message: Message) -> Result<Message> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer is closed")
                .with_backend(BACKEND)
                .with_operation(SEND)
                .with_undelivered(message));
        }
        // Size limits are the capability layer's (and the client's own); the delay is refused
        // here too because Kafka cannot hold a message back: a bare producer would deliver it
        // at once and drop the delay without a word.
        if message.delay().is_some() {
            let refused =
                self.core
                    .capabilities
                    .require(Capability::DelayedDelivery, BACKEND, SEND);
            if let Err(e) = refused {
                return Err(e.with_undelivered(message));
            }
        }
        Ok(message)
    }
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("window", &self.core.window_size)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        let message = self.check(message)?;
        // An exchange is a topic of its own, so both kinds of destination name a topic; the
        // routing key travels in a header, for the consumers' bindings to match.
        let topic = destination.name();
        // A known topic's name was validated when it became known.
        if !self.core.knows(topic) {
            if let Err(e) = validate_topic("destination", topic) {
                return Err(e.with_operation(SEND).with_undelivered(message));
            }
            if let Err(e) = self.core.ensure_topic(topic).await {
                return Err(e.with_undelivered(message));
            }
        }
        let permit = match self.core.acquire().await {
            Ok(p) => p,
            Err(e) => return Err(e.with_undelivered(message)),
        };
        let (tx, rx) = oneshot::channel();
        self.core
            .send(
                topic,
                message,
                Stamps::to(destination),
                Completion::Channel(tx),
                Some(permit),
            )
            .await?;
        Ok(PendingConfirm::waiting(async move {
            rx.await.unwrap_or_else(|_| Err(lost_report()))
        }))
    }

    async fn flush(&self) -> Result<()> {
        self.core.flush_all().await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.core.flush_everything().await
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        // Records still queued in librdkafka are sent by the shared core as long as it lives;
        // give them a bounded chance when this was the last handle.
        if Arc::strong_count(&self.core) == 1 {
            let _ = self.core.producer.flush(Duration::from_secs(5));
        }
    }
}
