//! Raw rdkafka on a Kafka-protocol broker: what the Kafka backend does, without mailroom. The
//! librdkafka properties are the backend's own ([`KafkaConfig::producer_client_config`],
//! [`KafkaConfig::consumer_client_config`]): an idempotent `FutureProducer` per producer, whose
//! delivery reports are the confirms (librdkafka's queue full = wait, as the backend's window
//! does), and a `StreamConsumer` per consumer in the subscription's consumer group, storing each
//! received message's offset for auto-commit and committing on close. The intended send time
//! travels as an 8-byte big-endian header.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use mailroom_core::{Destination, Error, ErrorKind, Result};
use mailroom_kafka::{KafkaBackend, KafkaConfig};

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

struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

#[async_trait]
impl DriverProducer for KafkaProducer {
    async fn send(&self, message: Outgoing) -> Result<Confirm> {
        let stamp = message.intended_us.to_be_bytes();
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: SENT_AT_HEADER,
            value: Some(&stamp[..]),
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

#[async_trait]
impl DriverConsumer for KafkaConsumer {
    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        let consumer = self
            .consumer
            .as_ref()
            .ok_or_else(|| Error::closed("raw rdkafka consumer closed"))?;
        let message = match tokio::time::timeout(timeout, consumer.recv()).await {
            Err(_) => return Ok(None),
            Ok(received) => received.map_err(|e| failed("receive", e))?,
        };
        let intended_us = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == SENT_AT_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes)
        });
        let incoming = Incoming {
            intended_us,
            bytes: message.payload().map_or(0, <[u8]>::len),
        };
        consumer
            .store_offset_from_message(&message)
            .map_err(|e| failed("store offset", e))?;
        Ok(Some(incoming))
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
