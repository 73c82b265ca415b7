//! The backend handle: connecting, the typed accessors, and the `Backend` trait; the source of
//! producers and consumers.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use mailroom_core::operation::{CONSUME, PRODUCER};
use mailroom_core::{
    Backend, Capabilities, Capability, Consumer, ConsumerOptions, Producer, Result, Topology,
};

use crate::config::SqsConfig;
use crate::connection::Connection;
use crate::consumer::SqsConsumer;
use crate::producer::SqsProducer;
use crate::topology::SqsTopology;
use crate::BACKEND;

/// A connection to SQS (or an SQS-API server).
///
/// This is the bare backend: the capability checks (what the backend lacks, message limits,
/// declaration validation) are core's `CapabilityLayer`, which `SqsFactory`, `mailroom::connect`
/// and `Registry::connect` put around it (see the crate docs, "The capability check").
pub struct SqsBackend {
    connection: Arc<Connection>,
    topology: SqsTopology,
}

impl SqsBackend {
    /// Connect with `config`, checking that the endpoint answers.
    pub async fn connect(config: SqsConfig) -> Result<Self> {
        let connection = Connection::open(config).await?;
        Ok(SqsBackend {
            topology: SqsTopology::new(connection.clone()),
            connection,
        })
    }

    /// Parse `url` and connect.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(SqsConfig::from_url(url)?).await
    }

    /// The configuration this backend was opened with.
    pub fn config(&self) -> &SqsConfig {
        &self.connection.config
    }

    /// The SDK client, for what mailroom does not cover (queue tags, purges, SNS wiring ...).
    pub fn client(&self) -> &Client {
        &self.connection.client
    }

    /// A producer with its concrete type.
    pub fn sqs_producer(&self) -> Result<SqsProducer> {
        self.connection.check_open(PRODUCER)?;
        Ok(SqsProducer::new(self.connection.clone()))
    }

    /// A consumer with its concrete type.
    pub async fn sqs_consumer(&self, queue: &str, options: ConsumerOptions) -> Result<SqsConsumer> {
        self.connection.check_open(CONSUME)?;
        // Kept under the capability layer's check: a bare backend would otherwise ignore the
        // replay and deliver the queue's next message instead.
        if options.replay.is_some() {
            self.connection
                .capabilities
                .require(Capability::Replay, BACKEND, CONSUME)?;
        }
        SqsConsumer::open(self.connection.clone(), queue, options).await
    }
}

impl std::fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBackend")
            .field("config", &self.connection.config)
            .finish()
    }
}

#[async_trait]
impl Backend for SqsBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.connection.capabilities
    }

    async fn server_version(&self) -> Result<String> {
        // SQS reports no version; say which service and where, which is what a report needs.
        let region = self
            .connection
            .client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
        Ok(match &self.connection.config.endpoint {
            Some(endpoint) => format!("SQS API at {endpoint}, region {region}"),
            None => format!("Amazon SQS, region {region}"),
        })
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.sqs_producer()?))
    }

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.sqs_consumer(queue, options).await?))
    }

    fn topology(&self) -> &dyn Topology {
        &self.topology
    }

    async fn close(&self) -> Result<()> {
        self.connection.close();
        Ok(())
    }
}
