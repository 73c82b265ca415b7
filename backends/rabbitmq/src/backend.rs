//! The backend handle: connecting, the typed accessors, and the `Backend` trait; the source of
//! producers, consumers and the topology API. Reconnecting is `connection.rs`'s job.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::operation::PRODUCER;
use mailroom_core::{
    Backend, Capabilities, Consumer, ConsumerOptions, DeliveryGuarantee, Producer, ProducerOptions,
    Result, Topology,
};

use crate::config::RabbitConfig;
use crate::connection::Connection;
use crate::consumer::RabbitConsumer;
use crate::producer::RabbitProducer;
use crate::topology::RabbitTopology;
use crate::BACKEND;

/// A connection to RabbitMQ: the source of producers, consumers and the topology API.
///
/// Producers and consumers share its AMQP connection (each on its own channel). When the
/// connection breaks, the next operation reconnects with backoff, re-declares what this backend
/// declared, and carries on.
///
/// This is the bare backend: the capability checks (what the backend lacks, message limits,
/// declaration validation) are core's `CapabilityLayer`, which `RabbitFactory`, `mailroom::connect`
/// and `Registry::connect` put around it (see the crate docs, "The capability check").
pub struct RabbitBackend {
    connection: Arc<Connection>,
    topology: RabbitTopology,
}

impl RabbitBackend {
    /// Connect with a typed config. Fails at once (no retry) on a refused login, an unknown
    /// vhost or an unreachable broker.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        let connection = Connection::open(config).await?;
        Ok(RabbitBackend {
            topology: RabbitTopology::new(connection.clone()),
            connection,
        })
    }

    /// Connect to an `amqp://` or `amqps://` URL (see [`RabbitConfig::from_url`]).
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(RabbitConfig::from_url(url)?).await
    }

    /// The configuration this backend was opened with.
    pub fn config(&self) -> &RabbitConfig {
        &self.connection.config
    }

    /// A producer with its concrete type (for its extra methods).
    pub async fn rabbit_producer(&self) -> Result<RabbitProducer> {
        self.rabbit_producer_with(self.connection.config.guarantee)
            .await
    }

    /// A producer with its concrete type and this delivery guarantee (`Confirmed` or
    /// `Unconfirmed`; `LeaderConfirmed` is `Unsupported`, RabbitMQ has no such level).
    pub async fn rabbit_producer_with(
        &self,
        guarantee: DeliveryGuarantee,
    ) -> Result<RabbitProducer> {
        self.connection.check_open(PRODUCER)?;
        self.connection
            .capabilities
            .delivery_guarantees
            .require(guarantee, BACKEND, PRODUCER)?;
        Ok(RabbitProducer::with_guarantee(
            self.connection.clone(),
            guarantee,
        ))
    }

    /// A consumer with its concrete type (the same as `Backend::consumer`, without the box).
    pub async fn rabbit_consumer(
        &self,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<RabbitConsumer> {
        RabbitConsumer::open(self.connection.clone(), queue, options).await
    }
}

impl std::fmt::Debug for RabbitBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBackend")
            .field("config", &self.connection.config)
            .finish()
    }
}

#[async_trait]
impl Backend for RabbitBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.connection.capabilities
    }

    async fn server_version(&self) -> Result<String> {
        let config = &self.connection.config;
        let target = config.display_target();
        if !config.tls {
            let wait = Duration::from_millis(config.connect_timeout_ms);
            if let Some(product) = probe_product(&config.host, config.port, wait).await {
                return Ok(format!("{product} (AMQP 0-9-1) at {target}"));
            }
        }
        Ok(format!("RabbitMQ (AMQP 0-9-1) at {target}"))
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.rabbit_producer().await?))
    }

    async fn producer_with(&self, options: ProducerOptions) -> Result<Box<dyn Producer>> {
        let guarantee = options
            .guarantee
            .unwrap_or(self.connection.config.guarantee);
        Ok(Box::new(self.rabbit_producer_with(guarantee).await?))
    }

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.rabbit_consumer(queue, options).await?))
    }

    fn topology(&self) -> &dyn Topology {
        &self.topology
    }

    async fn close(&self) -> Result<()> {
        self.connection.close().await;
        Ok(())
    }
}

/// The broker's product and version from the AMQP handshake ("RabbitMQ 3.10.8").
///
/// lapin reads the server properties of `Connection.Start` and keeps them to itself, so a bare
/// TCP probe sends the protocol header, reads that one frame and hangs up before any
/// credentials are sent. `None` if the broker does not answer in time or the frame is not a
/// `Connection.Start` (the caller then names the protocol only).
async fn probe_product(host: &str, port: u16, wait: Duration) -> Option<String> {
    use lapin::protocol::{connection, AMQPClass};
    use lapin::types::AMQPValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let read_start = async {
        let mut socket = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        socket.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        // Frame: type (1 = method), channel (2), payload size (4), payload, frame end.
        let mut header = [0u8; 7];
        socket.read_exact(&mut header).await.ok()?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if header[0] != 1 || size > 64 * 1024 {
            return None;
        }
        let mut payload = vec![0u8; size];
        socket.read_exact(&mut payload).await.ok()?;
        Some(payload)
    };
    let payload = tokio::time::timeout(wait, read_start).await.ok()??;
    let (_, class) = lapin::protocol::parse_class(&payload[..]).ok()?;
    let AMQPClass::Connection(connection::AMQPMethod::Start(start)) = class else {
        return None;
    };
    let text = |key: &str| match start.server_properties.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    };
    let product = text("product")?;
    Some(match text("version") {
        Some(version) => format!("{product} {version}"),
        None => product,
    })
}
