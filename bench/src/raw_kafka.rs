//! Raw rdkafka on a Kafka-protocol broker: what the Kafka backend does, without mailroom. The
//! librdkafka properties are the backend's own ([`KafkaConfig::producer_client_config`],
//! [`KafkaConfig::consumer_client_config`]): an idempotent `FutureProducer` per producer, whose
//! delivery reports are the confirms (librdkafka's queue full = wait, as the backend's window
//! does), and a `StreamConsumer` per consumer in the subscription's consumer group, storing each
//! received message's offset for auto-commit and committing on close.
//!
//! Each record has the shape the backend gives the same message, so that the broker stores and
//! serves the same bytes on both sides and the ratio is the clients' alone: the payload, the
//! intended send time as a decimal text header (mailroom headers are text, so the mailroom
//! driver writes it that way), and a fresh UUID in `x-mailroom-id`, the id every mailroom
//! message carries. Written with only the 8-byte time stamp, raw records were ~5% smaller and
//! the broker (and librdkafka's broker thread) did less per record for raw than for mailroom,
//! which the ratio then charged to mailroom.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use mailroom_core::{Destination, Error, ErrorKind, MessageId, Result};
use mailroom_kafka::{KafkaBackend, KafkaConfig, ID_HEADER};

use super::driver::{
    Confirm, DriverConsumer, DriverProducer, Incoming, MailroomDriver, Outgoing, TopicPlan,
    SENT_AT_HEADER,
};
use super::raw::{RawClient, RawDriver};

/// How long a send waits before retrying when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(1);

fn failed(what: &str, e: KafkaError) -> Error {
    Error::new(
        ErrorKind::Broker,
        format!("raw rdkafka: {what} failed: {e}"),
    )
    .with_source(e)
}

/// Open the raw rdkafka baseline for a `kafka://` URL.
pub async fn connect(url: &str) -> Result<RawDriver<RawKafka>> {
    let backend = KafkaBackend::from_url(url).await?;
    let config = backend.config().clone();
    Ok(RawDriver::new(
        MailroomDriver::new(Arc::new(backend)),
        RawKafka { config },
    ))
}

/// Raw rdkafka producers and consumers with the backend's properties.
pub struct RawKafka {
    config: KafkaConfig,
}

#[async_trait]
impl RawClient for RawKafka {
    fn name(&self) -> String {
        "raw-rdkafka".to_owned()
    }

    fn library(&self) -> String {
        let (_, version) = rdkafka::util::get_rdkafka_version();
        format!("rdkafka 0.39, librdkafka {version}")
    }

    async fn producer(&self, destination: &Destination) -> Result<Box<dyn DriverProducer>> {
        let topic = match destination {
            Destination::Queue(q) => q.to_string(),
            Destination::Exchange { name, .. } => name.to_string(),
        };
        let producer: FutureProducer = self
            .config
            .producer_client_config()
            .create()
            .map_err(|e| failed("create producer", e))?;
        Ok(Box::new(KafkaProducer {
            producer,
            topic,
            timeout: self.config.operation_timeout,
        }))
    }

    async fn consumer(
        &self,
        topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>> {
        // One subscription: its queue is the topic. Several: each is a consumer group on the
        // fanout exchange's topic, as the backend binds them.
        let source = match MailroomDriver::destination(topic) {
            Destination::Queue(q) => q.to_string(),
            Destination::Exchange { name, .. } => name.to_string(),
        };
        let consumer: StreamConsumer = self
            .config
            .consumer_client_config(subscription)
            .create()
            .map_err(|e| failed("create consumer", e))?;
        consumer
            .subscribe(&[&source])
            .map_err(|e| failed(&format!("subscribe to '{source}'"), e))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(consumer),
        }))
    }
}

/// Text formatted on the stack (a UUID, a number), as a careful rdkafka user would write
/// headers: librdkafka copies each one anyway.
struct StackText {
    buf: [u8; 40],
    len: usize,
}

impl StackText {
    fn of(value: impl fmt::Display) -> Self {
        let mut text = StackText {
            buf: [0; 40],
            len: 0,
        };
        // A UUID is 36 characters and a u64 at most 20: both fit.
        let _ = write!(text, "{value}");
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

#[async_trait]
impl DriverProducer for KafkaProducer {
    async fn send(&self, message: Outgoing) -> Result<Confirm> {
        let stamp = StackText::of(message.intended_us);
        let id = StackText::of(MessageId::generate());
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: SENT_AT_HEADER,
                value: Some(stamp.as_bytes()),
            })
            .insert(Header {
                key: ID_HEADER,
                value: Some(id.as_bytes()),
            });
        let mut record = FutureRecord::to(&self.topic)
            .payload(&message.payload[..])
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_str());
        }
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((e, _)) => return Err(failed("produce", e)),
            }
        };
        Ok(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(failed("delivery", e)),
                Err(_) => Err(Error::closed(
                    "raw rdkafka: the producer went away before the delivery report",
                )),
            }
        }
        .boxed())
    }

    async fn close(&self) -> Result<()> {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::new(ErrorKind::Broker, format!("flush task failed: {e}")))?
            .map_err(|e| failed("flush", e))
    }
}

struct KafkaConsumer {
    consumer: Option<StreamConsumer>,
}

impl KafkaConsumer {
    fn open(&self) -> Result<&StreamConsumer> {
        self.consumer
            .as_ref()
            .ok_or_else(|| Error::closed("raw rdkafka consumer closed"))
    }

    /// The sent-at header read and the offset stored for the commit, as for every message.
    fn take(consumer: &StreamConsumer, message: &BorrowedMessage<'_>) -> Result<Incoming> {
        let intended_us = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == SENT_AT_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
        });
        let incoming = Incoming {
            intended_us,
            bytes: message.payload().map_or(0, <[u8]>::len),
        };
        consumer
            .store_offset_from_message(message)
            .map_err(|e| failed("store offset", e))?;
        Ok(incoming)
    }
}

#[async_trait]
impl DriverConsumer for KafkaConsumer {
    /// A record librdkafka already fetched, without a timer or future: the mailroom driver's
    /// `try_receive` path, written as an rdkafka user draining a backlog would.
    fn try_receive(&mut self) -> Result<Option<Incoming>> {
        let consumer = self.open()?;
        match consumer.recv().now_or_never() {
            None => Ok(None),
            Some(received) => {
                let message = received.map_err(|e| failed("receive", e))?;
                Self::take(consumer, &message).map(Some)
            }
        }
    }

    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        let consumer = self.open()?;
        let message = match tokio::time::timeout(timeout, consumer.recv()).await {
            Err(_) => return Ok(None),
            Ok(received) => received.map_err(|e| failed("receive", e))?,
        };
        Self::take(consumer, &message).map(Some)
    }

    async fn close(&mut self) -> Result<()> {
        let Some(consumer) = self.consumer.take() else {
            return Ok(());
        };
        // Commit what was stored, then leave the group; both block, so off the runtime.
        tokio::task::spawn_blocking(move || {
            let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                other => other.map_err(|e| failed("commit", e)),
            };
            consumer.unsubscribe();
            drop(consumer);
            committed
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Broker, format!("close task failed: {e}")))?
    }
}
