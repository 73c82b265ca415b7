//! omniqueue (svix, <https://crates.io/crates/omniqueue>, 0.3) as a peer baseline: its in-memory,
//! RabbitMQ and SQS backends, used as its documentation shows, through the harness.
//!
//! Its semantics differ from mailroom's, and the report says so beside its figure:
//!
//! - **in-memory**: a send pushes onto an unbounded tokio mpsc (nothing to confirm); a receive
//!   copies the payload (kept for a nack); an ack does nothing.
//! - **RabbitMQ** (its own lapin 2): a send returns once lapin has taken the `basic.publish`;
//!   the channel is never put in confirm mode, so no publisher confirm is waited for (a message
//!   the broker drops is not reported). A connection per producer and per consumer, the
//!   backend's prefetch, persistent delivery when the backend's is; `basic.ack` per message.
//! - **SQS** (the backend's SDK client configuration): a send is one `SendMessage` per message,
//!   returned once the server stored it, with as many in flight as the backend allows in its
//!   batches (`send_concurrency` × 10); a receive is `ReceiveMessage` of up to 10; an ack is one
//!   `DeleteMessage` per message.
//!
//! omniqueue's send takes a payload only, so the intended send time rides in the payload's
//! first 20 bytes ([`crate::peers::stamp`]), one copy of the payload per send on our side.

use std::collections::HashMap;
#[cfg(feature = "sqs")]
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use omniqueue::backends::{InMemoryBackend, InMemoryConsumer, InMemoryProducer};
use omniqueue::{Delivery, QueueError};

use mailroom_core::{Destination, Error, ErrorKind, Result};

use crate::driver::{
    Confirm, Driver, DriverConsumer, DriverProducer, Incoming, MailroomDriver, Outgoing, TopicPlan,
};
use crate::peers::{read_stamp, stamp, PeerDriver, PEER_PREFIX};
use crate::raw::RawClient;

/// The peer's label in reports.
pub const NAME: &str = "peer-omniqueue";

fn failed(what: &str, e: QueueError) -> Error {
    Error::new(ErrorKind::Broker, format!("omniqueue: {what} failed: {e}"))
}

fn queue_only(destination: &Destination) -> Result<String> {
    match destination {
        Destination::Queue(q) => Ok(q.to_string()),
        Destination::Exchange { .. } => Err(Error::unsupported(
            "omniqueue sends to one queue per producer; a fanout is not driven",
        )),
    }
}

/// The omniqueue peer for a backend URL (with or without the `peer+` prefix), when this build
/// has the backend.
pub async fn connect(url: &str) -> Result<Option<Arc<dyn Driver>>> {
    let url = url.strip_prefix(PEER_PREFIX).unwrap_or(url);
    let scheme = url.split_once("://").map_or(url, |(s, _)| s);
    Ok(match scheme {
        "memory" => {
            let topology = MailroomDriver::new(mailroom::connect(url).await?);
            Some(Arc::new(PeerDriver::new(topology, OmniMemory::default())))
        }
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => Some(Arc::new(rabbitmq::connect(url).await?)),
        #[cfg(feature = "sqs")]
        "sqs" => Some(Arc::new(sqs::connect(url).await?)),
        _ => None,
    })
}

/// What a stamped delivery tells the harness.
fn incoming(body: &[u8]) -> Incoming {
    Incoming {
        intended_us: read_stamp(body),
        bytes: body.len(),
    }
}

async fn ack(delivery: Delivery) -> Result<()> {
    delivery.ack().await.map_err(|(e, _)| failed("ack", e))
}

type MemoryPair = (
    Arc<InMemoryProducer>,
    Arc<tokio::sync::Mutex<InMemoryConsumer>>,
);

/// omniqueue's in-memory backend: one producer/consumer pair per queue (its only way to make
/// one), shared by the harness's producers and consumers of that queue.
#[derive(Default)]
pub struct OmniMemory {
    queues: Mutex<HashMap<String, MemoryPair>>,
}

impl OmniMemory {
    async fn pair(&self, queue: &str) -> Result<MemoryPair> {
        if let Some(pair) = self.queues.lock().ok().and_then(|q| q.get(queue).cloned()) {
            return Ok(pair);
        }
        let (producer, consumer) = InMemoryBackend::builder()
            .build_pair()
            .await
            .map_err(|e| failed("build_pair", e))?;
        let made = (
            Arc::new(producer),
            Arc::new(tokio::sync::Mutex::new(consumer)),
        );
        let mut queues = self
            .queues
            .lock()
            .map_err(|_| Error::new(ErrorKind::Broker, "omniqueue peer lock poisoned"))?;
        Ok(queues.entry(queue.to_owned()).or_insert(made).clone())
    }
}

#[async_trait]
impl RawClient for OmniMemory {
    fn name(&self) -> String {
        NAME.to_owned()
    }

    fn library(&self) -> String {
        "omniqueue 0.3 in-memory: send = push onto an unbounded tokio mpsc (nothing to confirm); receive copies the payload; ack does nothing".to_owned()
    }

    async fn producer(&self, destination: &Destination) -> Result<Box<dyn DriverProducer>> {
        let (producer, _) = self.pair(&queue_only(destination)?).await?;
        Ok(Box::new(MemoryProducer { producer }))
    }

    async fn consumer(
        &self,
        _topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>> {
        let (_, consumer) = self.pair(subscription).await?;
        Ok(Box::new(MemoryConsumer { consumer }))
    }
}

struct MemoryProducer {
    producer: Arc<InMemoryProducer>,
}

#[async_trait]
impl DriverProducer for MemoryProducer {
    async fn send(&self, message: Outgoing) -> Result<Confirm> {
        let body = stamp(&message.payload, message.intended_us);
        self.producer
            .send_raw(&body)
            .await
            .map_err(|e| failed("send_raw", e))?;
        Ok(futures_util::future::ready(Ok(())).boxed())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

struct MemoryConsumer {
    consumer: Arc<tokio::sync::Mutex<InMemoryConsumer>>,
}

#[async_trait]
impl DriverConsumer for MemoryConsumer {
    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        let mut consumer = self.consumer.lock().await;
        // The channel's receive is cancel-safe: a timeout loses nothing.
        let delivery = match tokio::time::timeout(timeout, consumer.receive()).await {
            Err(_) => return Ok(None),
            Ok(delivery) => delivery.map_err(|e| failed("receive", e))?,
        };
        drop(consumer);
        let seen = incoming(delivery.borrow_payload().unwrap_or_default());
        ack(delivery).await?;
        Ok(Some(seen))
    }

    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::*;
    use mailroom_rabbitmq::{RabbitBackend, RabbitConfig};
    use omniqueue::backends::rabbitmq::{BasicProperties, ConnectionProperties};
    use omniqueue::backends::{
        RabbitMqBackend, RabbitMqConfig, RabbitMqConsumer, RabbitMqProducer,
    };

    /// Open the RabbitMQ peer: omniqueue's own connections, to the URL's broker.
    pub(super) async fn connect(url: &str) -> Result<PeerDriver<OmniRabbit>> {
        let backend = RabbitBackend::from_url(url).await?;
        let config = backend.config().clone();
        // mailroom's options (`?prefetch=...`) mean nothing to lapin 2: the broker address only.
        let uri = url.split_once('?').map_or(url, |(u, _)| u).to_owned();
        Ok(PeerDriver::new(
            MailroomDriver::new(Arc::new(backend)),
            OmniRabbit { uri, config },
        ))
    }

    /// omniqueue's RabbitMQ backend.
    pub struct OmniRabbit {
        uri: String,
        config: RabbitConfig,
    }

    impl OmniRabbit {
        fn omni_config(&self, exchange: &str, routing_key: &str, queue: &str) -> RabbitMqConfig {
            let mut properties = BasicProperties::default();
            if self.config.persistent {
                properties = properties.with_delivery_mode(2);
            }
            RabbitMqConfig {
                uri: self.uri.clone(),
                connection_properties: ConnectionProperties::default(),
                publish_exchange: exchange.to_owned(),
                publish_routing_key: routing_key.to_owned(),
                publish_options: Default::default(),
                publish_properties: properties,
                consume_queue: queue.to_owned(),
                consumer_tag: String::new(),
                consume_options: Default::default(),
                consume_arguments: Default::default(),
                consume_prefetch_count: Some(self.config.prefetch),
                requeue_on_nack: true,
            }
        }
    }

    #[async_trait]
    impl RawClient for OmniRabbit {
        fn name(&self) -> String {
            NAME.to_owned()
        }

        fn library(&self) -> String {
            format!(
                "omniqueue 0.3 RabbitMQ over lapin 2: send returns once lapin took the basic.publish, no publisher confirm (confirm mode never selected); {} delivery; prefetch {}; basic.ack per message; a connection per producer and per consumer",
                if self.config.persistent { "persistent" } else { "transient" },
                self.config.prefetch
            )
        }

        async fn producer(&self, destination: &Destination) -> Result<Box<dyn DriverProducer>> {
            let (exchange, routing_key) = match destination {
                Destination::Queue(q) => (String::new(), q.to_string()),
                Destination::Exchange { name, routing_key } => {
                    (name.to_string(), routing_key.to_string())
                }
            };
            let producer = RabbitMqBackend::builder(self.omni_config(&exchange, &routing_key, ""))
                .build_producer()
                .await
                .map_err(|e| failed("connect a producer", e))?;
            Ok(Box::new(RabbitProducer { producer }))
        }

        async fn consumer(
            &self,
            _topic: &TopicPlan,
            subscription: &str,
        ) -> Result<Box<dyn DriverConsumer>> {
            let consumer = RabbitMqBackend::builder(self.omni_config("", "", subscription))
                .build_consumer()
                .await
                .map_err(|e| failed("connect a consumer", e))?;
            Ok(Box::new(RabbitConsumer { consumer }))
        }
    }

    struct RabbitProducer {
        producer: RabbitMqProducer,
    }

    #[async_trait]
    impl DriverProducer for RabbitProducer {
        async fn send(&self, message: Outgoing) -> Result<Confirm> {
            let body = stamp(&message.payload, message.intended_us);
            self.producer
                .send_raw(&body)
                .await
                .map_err(|e| failed("send_raw", e))?;
            // Nothing more to wait for: omniqueue asks for no publisher confirm.
            Ok(futures_util::future::ready(Ok(())).boxed())
        }

        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    struct RabbitConsumer {
        consumer: RabbitMqConsumer,
    }

    #[async_trait]
    impl DriverConsumer for RabbitConsumer {
        async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
            let delivery = match tokio::time::timeout(timeout, self.consumer.receive()).await {
                Err(_) => return Ok(None),
                Ok(delivery) => delivery.map_err(|e| failed("receive", e))?,
            };
            let seen = incoming(delivery.borrow_payload().unwrap_or_default());
            ack(delivery).await?;
            Ok(Some(seen))
        }

        async fn close(&mut self) -> Result<()> {
            Ok(())
        }
    }
}

#[cfg(feature = "sqs")]
mod sqs {
    use super::*;
    use mailroom_sqs::{SqsBackend as MailroomSqs, MAX_BATCH_ENTRIES};
    use omniqueue::backends::{SqsBackend, SqsConsumer, SqsProducer};
    use tokio::sync::Semaphore;

    /// A buffer of deliveries a batch receive returned, handed out one by one.
    type Buffered = VecDeque<Delivery>;

    /// Open the SQS peer: omniqueue with the SDK configuration the backend builds for the URL.
    pub(super) async fn connect(url: &str) -> Result<PeerDriver<OmniSqs>> {
        let backend = MailroomSqs::from_url(url).await?;
        let client = backend.client().clone();
        let in_flight = backend.config().send_concurrency.max(1) * MAX_BATCH_ENTRIES;
        let wait = backend.config().wait_time;
        Ok(PeerDriver::new(
            MailroomDriver::new(Arc::new(backend)),
            OmniSqs {
                client,
                in_flight,
                wait,
            },
        ))
    }

    /// omniqueue's SQS backend.
    pub struct OmniSqs {
        client: aws_sdk_sqs::Client,
        in_flight: usize,
        wait: Duration,
    }

    impl OmniSqs {
        async fn queue_url(&self, queue: &str) -> Result<String> {
            let out = self
                .client
                .get_queue_url()
                .queue_name(queue)
                .send()
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Broker,
                        format!(
                            "omniqueue peer: GetQueueUrl '{queue}' failed: {}",
                            aws_sdk_sqs::error::DisplayErrorContext(e)
                        ),
                    )
                })?;
            out.queue_url()
                .map(str::to_owned)
                .ok_or_else(|| Error::not_found(format!("omniqueue peer: no URL for '{queue}'")))
        }
    }

    #[async_trait]
    impl RawClient for OmniSqs {
        fn name(&self) -> String {
            NAME.to_owned()
        }

        fn library(&self) -> String {
            format!(
                "omniqueue 0.3 SQS over aws-sdk-sqs 1: send = one SendMessage per message, returned once stored, up to {} in flight; receive = ReceiveMessage of up to 10; ack = one DeleteMessage per message",
                self.in_flight
            )
        }

        async fn producer(&self, destination: &Destination) -> Result<Box<dyn DriverProducer>> {
            let url = self.queue_url(&queue_only(destination)?).await?;
            let producer = SqsBackend::builder(url.as_str())
                .sqs_config(self.client.config().clone())
                .build_producer()
                .await
                .map_err(|e| failed("build a producer", e))?;
            Ok(Box::new(SqsPeerProducer {
                producer: Arc::new(producer),
                window: Arc::new(Semaphore::new(self.in_flight)),
            }))
        }

        async fn consumer(
            &self,
            _topic: &TopicPlan,
            subscription: &str,
        ) -> Result<Box<dyn DriverConsumer>> {
            let url = self.queue_url(subscription).await?;
            let consumer = SqsBackend::builder(url.as_str())
                .sqs_config(self.client.config().clone())
                .build_consumer()
                .await
                .map_err(|e| failed("build a consumer", e))?;
            Ok(Box::new(SqsPeerConsumer {
                consumer,
                buffered: Buffered::new(),
                wait: self.wait,
            }))
        }
    }

    struct SqsPeerProducer {
        producer: Arc<SqsProducer>,
        window: Arc<Semaphore>,
    }

    #[async_trait]
    impl DriverProducer for SqsPeerProducer {
        async fn send(&self, message: Outgoing) -> Result<Confirm> {
            let slot = self
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::closed("omniqueue peer producer closed"))?;
            let body = stamp(&message.payload, message.intended_us);
            let body = String::from_utf8(body).map_err(|_| {
                Error::unsupported("omniqueue's SQS send takes text: the payload is not UTF-8")
            })?;
            let producer = self.producer.clone();
            // The send runs on its own so that the next can start: the confirm is its reply.
            let sent = tokio::spawn(async move {
                let outcome = producer.send_raw(&body).await;
                drop(slot);
                outcome.map_err(|e| failed("SendMessage", e))
            });
            Ok(async move {
                sent.await
                    .map_err(|e| Error::new(ErrorKind::Broker, format!("send task: {e}")))?
            }
            .boxed())
        }

        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    struct SqsPeerConsumer {
        consumer: SqsConsumer,
        buffered: Buffered,
        wait: Duration,
    }

    #[async_trait]
    impl DriverConsumer for SqsPeerConsumer {
        async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
            if self.buffered.is_empty() {
                // Long polls are whole seconds in SQS: under a second is a short poll.
                let deadline = timeout.min(self.wait);
                let got = self
                    .consumer
                    .receive_all(10, deadline)
                    .await
                    .map_err(|e| failed("ReceiveMessage", e))?;
                self.buffered.extend(got);
            }
            let Some(delivery) = self.buffered.pop_front() else {
                return Ok(None);
            };
            let seen = incoming(delivery.borrow_payload().unwrap_or_default());
            ack(delivery).await?;
            Ok(Some(seen))
        }

        async fn close(&mut self) -> Result<()> {
            Ok(())
        }
    }
}
