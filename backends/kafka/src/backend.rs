//! The backend handle: connecting, the typed accessors, and the `Backend` trait; the source of
//! producers, consumers and transactional units.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::operation::{CLUSTER_ID, CONSUME, PRODUCER, SERVER_VERSION, TRANSACTIONAL};
use mailroom_core::{
    Backend, Capabilities, Consumer, ConsumerOptions, DeliveryGuarantee, Producer, ProducerOptions,
    Result, Topology, TransactionOptions, Transactional,
};

use crate::config::KafkaConfig;
use crate::connection::{blocking, Connection};
use crate::consumer::KafkaConsumer;
use crate::producer::{KafkaProducer, ProducerCore};
use crate::topology::KafkaTopology;
use crate::transaction::KafkaTransactional;
use crate::{error, BACKEND};

/// A connection to a Kafka cluster (any Kafka-protocol broker: Apache Kafka, Redpanda, tansu).
///
/// This is the bare backend: the capability checks (what the backend lacks, message limits,
/// declaration validation) are core's `CapabilityLayer`, which `KafkaFactory`, `mailroom::connect`
/// and `Registry::connect` put around it (see the crate docs, "The capability check").
#[derive(Clone)]
pub struct KafkaBackend {
    connection: Arc<Connection>,
    topology: KafkaTopology,
}

impl KafkaBackend {
    /// Connect: make the admin client and wait (at most `connect_timeout`) for the cluster's
    /// metadata, so that an unreachable broker is a `Connection` error here, not a hang later.
    /// An invalid librdkafka property is a `Config` error naming it.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let connection = Connection::open(config).await?;
        Ok(KafkaBackend {
            topology: KafkaTopology::new(connection.clone()),
            connection,
        })
    }

    /// Connect from a `kafka://` URL.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(KafkaConfig::from_url(url)?).await
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.connection.config
    }

    /// A typed producer (the same as `Backend::producer`, without the box).
    pub fn kafka_producer(&self) -> Result<KafkaProducer> {
        self.kafka_producer_with(self.connection.config.guarantee)
    }

    /// A typed producer with this delivery guarantee (Kafka's `acks`, see
    /// [`KafkaConfig::producer_client_config_for`]); one that a librdkafka property of the
    /// configuration contradicts is a `Config` error ([`KafkaConfig::check_guarantee`]).
    pub fn kafka_producer_with(&self, guarantee: DeliveryGuarantee) -> Result<KafkaProducer> {
        self.connection.check_open(PRODUCER)?;
        let config = &self.connection.config;
        let capabilities = &self.connection.capabilities;
        capabilities
            .delivery_guarantees
            .require(guarantee, BACKEND, PRODUCER)?;
        config
            .check_guarantee(guarantee)
            .map_err(|e| e.with_operation(PRODUCER))?;
        Ok(KafkaProducer::new(ProducerCore::with_client_config(
            &config.producer_client_config_for(guarantee),
            config,
            capabilities.clone(),
        )?))
    }

    /// A typed consumer (the same as `Backend::consumer`, without the box).
    pub async fn kafka_consumer(
        &self,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<KafkaConsumer> {
        self.connection.check_open(CONSUME)?;
        KafkaConsumer::open(self.connection.clone(), queue, options).await
    }

    /// A typed transactional unit (the same as `Backend::transactional`, without the box and
    /// without the capability check: on a backend opened with `?transactions=false` it is the
    /// registry's [`CapabilityLayer`](mailroom_core::layer::CapabilityLayer) that refuses one
    /// with `Unsupported` before any I/O; here the broker refuses the first commit).
    pub async fn kafka_transactional(
        &self,
        queue: &str,
        options: TransactionOptions,
    ) -> Result<KafkaTransactional> {
        self.connection.check_open(TRANSACTIONAL)?;
        KafkaTransactional::open(self.connection.clone(), queue, options).await
    }
}

impl fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("config", &self.connection.config)
            .finish()
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.connection.capabilities
    }

    /// `KafkaSettle::nack` refuses a delayed requeue with the layer's own error and gives the
    /// record back, so the capability layer need not wrap every delivery to do it.
    fn settle_refuses_unsupported(&self) -> bool {
        true
    }

    async fn server_version(&self) -> Result<String> {
        let connection = self.connection.clone();
        let brokers = blocking(move || {
            let md = connection
                .admin
                .inner()
                .fetch_metadata(None, connection.config.operation_timeout)
                .map_err(|e| error::map(e, SERVER_VERSION))?;
            Ok(md
                .brokers()
                .iter()
                .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
                .collect::<Vec<_>>()
                .join(", "))
        })
        .await?;
        let (_, client) = rdkafka::util::get_rdkafka_version();
        Ok(format!(
            "Kafka protocol, brokers [{brokers}] (client librdkafka {client})"
        ))
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.kafka_producer()?))
    }

    async fn producer_with(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        let guarantee = options
            .guarantee
            .unwrap_or(self.connection.config.guarantee);
        Ok(Box::new(self.kafka_producer_with(guarantee)?))
    }

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.kafka_consumer(queue, options).await?))
    }

    fn topology(&self) -> &dyn Topology {
        &self.topology
    }

    async fn transactional(
        &self,
        queue: &str,
        options: TransactionOptions,
    ) -> Result<Box<dyn Transactional>> {
        Ok(Box::new(self.kafka_transactional(queue, options).await?))
    }

    /// The cluster id the brokers report (KIP-78), the same whichever brokers the URL lists.
    async fn cluster_id(&self) -> Result<Option<String>> {
        self.connection.check_open(CLUSTER_ID)?;
        let connection = self.connection.clone();
        blocking(move || {
            Ok(connection
                .admin
                .inner()
                .fetch_cluster_id(connection.config.operation_timeout))
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        self.connection.close().await
    }
}
