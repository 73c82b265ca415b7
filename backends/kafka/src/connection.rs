//! One connection to a Kafka cluster: the admin client for metadata and topics, the topology
//! this process declared, the internal producer consumers requeue and dead-letter with, and
//! whether it was closed. Every producer, consumer and topology handle holds it.
//!
//! librdkafka reconnects by itself, so there is no reconnect logic here: opening waits (at most
//! `connect_timeout`) for the cluster's metadata, and later calls are bounded by
//! `operation_timeout`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_core::operation::CONNECT;
use mailroom_core::{Capabilities, ClosedFlag, Error, ErrorKind, Result};
use rdkafka::admin::AdminClient;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::producer::ProducerCore;
use crate::topology::Declared;
use crate::{error, BACKEND};

/// What every handle of one connection shares.
pub(crate) struct Connection {
    pub config: KafkaConfig,
    pub capabilities: Capabilities,
    pub admin: AdminClient<DefaultClientContext>,
    /// Queue settings and bindings this process declared on the cluster.
    pub declared: Arc<Declared>,
    /// The producer consumers use to requeue and dead-letter, made on first need.
    internal: Mutex<Option<Arc<ProducerCore>>>,
    closed: ClosedFlag,
}

impl Connection {
    pub async fn open(config: KafkaConfig) -> Result<Arc<Self>> {
        refuse_fast(&config).await?;
        let capabilities = crate::capabilities(&config);
        let admin: AdminClient<DefaultClientContext> = config
            .client_config(&[])
            .create()
            .map_err(|e| error::map(e, CONNECT))?;
        // Producer- and consumer-only properties are only checked when such a client is made;
        // make one of each now so that a typo fails `connect`, not the first send.
        drop(ProducerCore::new(&config, capabilities.clone())?);
        crate::consumer::check_consumer_config(&config)?;
        let connection = Arc::new(Connection {
            declared: Declared::for_cluster(&config.bootstrap_servers()),
            config,
            capabilities,
            admin,
            internal: Mutex::new(None),
            closed: ClosedFlag::new(BACKEND),
        });
        let probe = connection.clone();
        let reached = blocking(move || {
            probe
                .admin
                .inner()
                .fetch_metadata(None, probe.config.connect_timeout)
                .map(|_| ())
                .map_err(|e| error::map(e, CONNECT))
        })
        .await;
        if let Err(e) = reached {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "cannot reach the Kafka brokers {} within {:?}: {}",
                    connection.config.bootstrap_servers(),
                    connection.config.connect_timeout,
                    e.message()
                ),
            )
            .with_boxed_source(Box::new(e))
            .with_backend(BACKEND)
            .with_operation(CONNECT));
        }
        Ok(connection)
    }

    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        self.closed.check_open(operation)
    }

    /// Refuse further operations, and send what the internal producer still holds.
    pub async fn close(&self) -> Result<()> {
        self.closed.close();
        let internal = self
            .internal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(core) = internal {
            core.flush_all().await?;
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
        let connection = self.clone();
        let topic = topic.to_owned();
        blocking(move || {
            topic_partitions(
                connection.admin.inner(),
                &topic,
                connection.config.operation_timeout,
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

/// Fail at once when no bootstrap broker can be reached at all: each one refuses the TCP
/// connection or has a name that does not resolve. librdkafka would retry them until the
/// connect timeout (10 s by default) and then report only that time ran out. Anything else
/// (a broker that accepts, or does not answer) is left to the metadata wait.
async fn refuse_fast(config: &KafkaConfig) -> Result<()> {
    let mut problems = Vec::with_capacity(config.brokers.len());
    for broker in &config.brokers {
        match tokio::time::timeout(config.connect_timeout, unreachable_because(broker)).await {
            Ok(Some(problem)) => problems.push(format!("{broker}: {problem}")),
            Ok(None) | Err(_) => return Ok(()),
        }
    }
    Err(Error::new(
        ErrorKind::Connection,
        format!("cannot reach any Kafka broker: {}", problems.join("; ")),
    )
    .set_temporary(true)
    .with_backend(BACKEND)
    .with_operation(CONNECT))
}

/// Why `host:port` cannot be reached, or `None` when it may be.
async fn unreachable_because(broker: &str) -> Option<String> {
    let addrs: Vec<_> = match tokio::net::lookup_host(broker).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Some(format!("cannot resolve the host ({e})")),
    };
    if addrs.is_empty() {
        return Some("the host resolves to no address".into());
    }
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => return None,
        }
    }
    Some("connection refused (is Kafka running, and listening on this port?)".into())
}
