//! The connection: an admin client for metadata and topics, and the source of producers and
//! consumers.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::{
    Backend, Capabilities, Capability, Consumer, ConsumerOptions, Error, ErrorKind, Producer,
    Result, Topology, TransactionOptions, Transactional,
};
use rdkafka::admin::AdminClient;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::consumer::KafkaConsumer;
use crate::producer::{KafkaProducer, ProducerCore};
use crate::topology::{KafkaTopology, Registry};
use crate::transaction::KafkaTransactional;
use crate::{error, BACKEND};

/// What every handle of one connection shares.
pub(crate) struct Shared {
    pub config: KafkaConfig,
    pub capabilities: Capabilities,
    pub admin: AdminClient<DefaultClientContext>,
    pub registry: Arc<Registry>,
    /// The producer consumers use to requeue and dead-letter, made on first need.
    internal: Mutex<Option<Arc<ProducerCore>>>,
    closed: AtomicBool,
}

impl Shared {
    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("the Kafka backend connection is closed")
                .with_backend(BACKEND)
                .with_operation(operation));
        }
        Ok(())
    }

    pub fn internal_producer(&self) -> Result<Arc<ProducerCore>> {
        let mut slot = self.internal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(core) = slot.as_ref() {
            return Ok(core.clone());
        }
        let core = ProducerCore::new(&self.config, self.capabilities.clone())?;
        *slot = Some(core.clone());
        Ok(core)
    }

    /// The partitions of `topic`, or `None` if it does not exist (runs a blocking call).
    pub async fn partitions(self: &Arc<Self>, topic: &str) -> Result<Option<Vec<i32>>> {
        let shared = self.clone();
        let topic = topic.to_owned();
        blocking(move || {
            topic_partitions(
                shared.admin.inner(),
                &topic,
                shared.config.operation_timeout,
            )
        })
        .await
    }
}

/// Run a blocking librdkafka call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::new(
            ErrorKind::Broker,
            format!("blocking librdkafka call failed: {e}"),
        )
        .with_backend(BACKEND)
    })?
}

/// The partition ids of `topic`, or `None` if the cluster does not know it.
pub(crate) fn topic_partitions<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<i32>>> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| error::map(e, "metadata"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error().map(RDKafkaErrorCode::from) {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            Ok(None)
        }
        Some(code) => Err(error::map_code(
            code,
            format!("metadata of topic '{topic}'"),
            "metadata",
        )),
        None if t.partitions().is_empty() => Ok(None),
        None => Ok(Some(t.partitions().iter().map(|p| p.id()).collect())),
    }
}

/// A connection to a Kafka cluster (any Kafka-protocol broker: Apache Kafka, Redpanda, tansu).
#[derive(Clone)]
pub struct KafkaBackend {
    shared: Arc<Shared>,
    topology: KafkaTopology,
}

impl KafkaBackend {
    /// Connect: make the admin client and wait (at most `connect_timeout`) for the cluster's
    /// metadata, so that an unreachable broker is a `Connection` error here, not a hang later.
    /// An invalid librdkafka property is a `Config` error naming it.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let capabilities = crate::capabilities(&config);
        let admin: AdminClient<DefaultClientContext> = config
            .client_config(&[])
            .create()
            .map_err(|e| error::map(e, "connect"))?;
        // Producer- and consumer-only properties are only checked when such a client is made;
        // make one of each now so that a typo fails `connect`, not the first send.
        drop(ProducerCore::new(&config, capabilities.clone())?);
        crate::consumer::check_consumer_config(&config)?;
        let shared = Arc::new(Shared {
            registry: Registry::for_cluster(&config.bootstrap_servers()),
            config,
            capabilities,
            admin,
            internal: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let probe = shared.clone();
        let reached = blocking(move || {
            probe
                .admin
                .inner()
                .fetch_metadata(None, probe.config.connect_timeout)
                .map(|_| ())
                .map_err(|e| error::map(e, "connect"))
        })
        .await;
        if let Err(e) = reached {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "cannot reach the Kafka brokers {} within {:?}: {}",
                    shared.config.bootstrap_servers(),
                    shared.config.connect_timeout,
                    e.message()
                ),
            )
            .with_boxed_source(Box::new(e))
            .with_backend(BACKEND)
            .with_operation("connect"));
        }
        Ok(KafkaBackend {
            topology: KafkaTopology::new(shared.clone()),
            shared,
        })
    }

    /// Connect from a `kafka://` URL.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(KafkaConfig::from_url(url)?).await
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// A typed producer (the same as `Backend::producer`, without the box).
    pub fn kafka_producer(&self) -> Result<KafkaProducer> {
        self.shared.check_open("producer")?;
        Ok(KafkaProducer::new(ProducerCore::new(
            &self.shared.config,
            self.shared.capabilities.clone(),
        )?))
    }

    /// A typed consumer (the same as `Backend::consumer`, without the box).
    pub async fn kafka_consumer(
        &self,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<KafkaConsumer> {
        self.shared.check_open("consume")?;
        KafkaConsumer::open(self.shared.clone(), queue, options).await
    }

    /// A typed transactional unit (the same as `Backend::transactional`, without the box).
    /// `Unsupported` before any I/O when the backend was opened with `?transactions=false`.
    pub async fn kafka_transactional(
        &self,
        queue: &str,
        options: TransactionOptions,
    ) -> Result<KafkaTransactional> {
        self.shared
            .capabilities
            .require(Capability::Transactions, BACKEND, "transactional")?;
        self.shared.check_open("transactional")?;
        KafkaTransactional::open(self.shared.clone(), queue, options).await
    }
}

impl fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("config", &self.shared.config)
            .finish()
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn server_version(&self) -> Result<String> {
        let shared = self.shared.clone();
        let brokers = blocking(move || {
            let md = shared
                .admin
                .inner()
                .fetch_metadata(None, shared.config.operation_timeout)
                .map_err(|e| error::map(e, "server_version"))?;
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
        self.shared.check_open("cluster_id")?;
        let shared = self.shared.clone();
        blocking(move || {
            Ok(shared
                .admin
                .inner()
                .fetch_cluster_id(shared.config.operation_timeout))
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let internal = self
            .shared
            .internal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(core) = internal {
            core.flush_all().await?;
        }
        Ok(())
    }
}
