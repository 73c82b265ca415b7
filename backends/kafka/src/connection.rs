//! One connection to a Kafka cluster: the admin client for metadata and topics, the topology
//! this process declared, the internal producer consumers requeue and dead-letter with, and
//! whether it was closed. Every producer, consumer and topology handle holds it.
//!
//! librdkafka reconnects by itself, so there is no reconnect logic here: opening waits (at most
//! `connect_timeout`) for the cluster's metadata, and later calls are bounded by
//! `operation_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_core::operation::CONNECT;
use mailroom_core::{Capabilities, ClosedFlag, Error, ErrorKind, Result};
use rdkafka::admin::AdminClient;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::context::{diagnose, error_for, ConnectContext, Diagnosis, Reported};
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
        if let Err(e) = reach(&connection.config).await {
            if e.kind() != ErrorKind::Connection {
                return Err(e);
            }
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
            // Requeues and dead letters are sent detached, some without a window slot.
            core.flush_everything().await?;
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

/// Wait (at most `connect_timeout`) until the cluster answers a metadata request, or fail with
/// the typed error of a failure that waiting cannot cure (a refused login or TLS handshake, a
/// listener without SASL: [`diagnose`]). A certificate that failed verification is probed a
/// second time without the host name check, to say whether it is untrusted or names another
/// host: OpenSSL's words for both are the same.
async fn reach(config: &KafkaConfig) -> Result<()> {
    match probe(config, config.connect_timeout).await? {
        None => Ok(()),
        Some((Diagnosis::CertificateRefused, reported)) => {
            let relaxed = config
                .clone()
                .property("ssl.endpoint.identification.algorithm", "none");
            let which = match probe(&relaxed, config.connect_timeout.min(HOSTNAME_PROBE)).await {
                // Trusted once the name is not checked: the name is the problem.
                Ok(None) => Diagnosis::HostnameMismatch,
                Ok(Some((Diagnosis::CertificateRefused, _))) => Diagnosis::Untrusted,
                _ => Diagnosis::CertificateRefused,
            };
            Err(error_for(which, &reported, config))
        }
        Some((diagnosis, reported)) => Err(error_for(diagnosis, &reported, config)),
    }
}

/// The longest the second, host-name-blind probe of a refused certificate may take.
const HOSTNAME_PROBE: Duration = Duration::from_secs(10);

/// Wait (at most `timeout`) for the cluster's metadata through a probe client whose log and
/// error events are served ([`ConnectContext`]; nobody serves an admin client's). librdkafka
/// keeps retrying a broker that refused the login or the TLS handshake until the timeout, so
/// while it waits the failures it reports are looked at, and one that retrying cannot cure ends
/// the wait at once with its diagnosis (the blocking thread stops at the end of its current
/// slice). `Ok(None)`: the cluster answered. The probe is a client of its own, dropped here:
/// one more connection per `connect`, whose events, unlike the admin client's, are served.
async fn probe(config: &KafkaConfig, timeout: Duration) -> Result<Option<(Diagnosis, Reported)>> {
    const LOOK_EVERY: Duration = Duration::from_millis(50);
    let probe: Arc<BaseProducer<ConnectContext>> = Arc::new(
        config
            .client_config(&[])
            .create_with_context(ConnectContext::default())
            .map_err(|e| error::map(e, CONNECT))?,
    );
    let fetching = probe.clone();
    let cancelled = Arc::new(AtomicBool::new(false));
    // Set when this function returns, so that the blocking thread stops within one slice
    // instead of holding a client that retries a refused broker until the timeout.
    let _cancel_on_return = CancelOnDrop(cancelled.clone());
    let fetch = blocking(move || {
        // Slices that double, so that a slow broker still answers one of them.
        let deadline = Instant::now() + timeout;
        let mut slice = Duration::from_millis(500);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            match fetching.client().fetch_metadata(None, slice.min(left)) {
                Ok(_) => return Ok(()),
                Err(e) if left <= slice || cancelled.load(Ordering::Acquire) => {
                    return Err(error::map(e, CONNECT))
                }
                Err(_) => {
                    // An error before the slice ran out is not worth asking again at once.
                    if started.elapsed() < slice {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    slice *= 2;
                }
            }
        }
    });
    tokio::pin!(fetch);
    let diagnosed = || {
        // Serves the probe's log and error events: they reach `ConnectContext` here.
        probe.poll(Duration::ZERO);
        let reported = probe.context().last_failure()?;
        diagnose(&reported, config).map(|d| (d, reported))
    };
    loop {
        tokio::select! {
            result = &mut fetch => {
                return match (result, diagnosed()) {
                    (Ok(()), _) => Ok(None),
                    (Err(_), Some(diagnosed)) => Ok(Some(diagnosed)),
                    (Err(e), None) => Err(match probe.context().last_failure() {
                        // What librdkafka last said about the brokers says more than its
                        // timeout does.
                        Some(r) => Error::new(e.kind(), format!("{} ({})", e.message(), r.reason))
                            .with_source(e),
                        None => e,
                    }),
                };
            }
            _ = tokio::time::sleep(LOOK_EVERY) => {
                if let Some(diagnosed) = diagnosed() {
                    return Ok(Some(diagnosed));
                }
            }
        }
    }
}

/// Sets the flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
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

/// Whether the leader of every partition of `topic` takes writes now.
///
/// Metadata is not enough: on Apache Kafka 4.1 (KRaft) the broker serves a new topic's
/// partitions, with their leader and no error, a moment before that leader has made their logs,
/// and a write in that moment is refused with NOT_LEADER_OR_FOLLOWER. An `acks=1`/`all`
/// producer retries it; under `acks=0` the broker drops the batch and closes the connection,
/// and every record of it is lost while its delivery report says sent. A ListOffsets answered
/// for each partition (librdkafka's watermark query, sent to the leader) shows the leader has
/// the log: that is what the produce path checks too.
pub(crate) fn topic_writable<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partitions: usize,
    timeout: Duration,
) -> Result<Writable> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| error::map(e, "metadata"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Writable::NotYet("not in the metadata yet".into()));
    };
    if let Some(code) = t.error().map(RDKafkaErrorCode::from) {
        return not_yet_or_error(code, topic, None);
    }
    if t.partitions().len() < partitions {
        return Ok(Writable::NotYet(format!(
            "{} of {partitions} partitions in the metadata",
            t.partitions().len()
        )));
    }
    for p in t.partitions() {
        if let Some(code) = p.error().map(RDKafkaErrorCode::from) {
            return not_yet_or_error(code, topic, Some(p.id()));
        }
        if p.leader() < 0 {
            return Ok(Writable::NotYet(format!(
                "partition {} has no leader",
                p.id()
            )));
        }
    }
    for p in t.partitions() {
        match client.fetch_watermarks(topic, p.id(), timeout) {
            Ok(_) => {}
            Err(KafkaError::MetadataFetch(code)) => {
                return not_yet_or_error(code, topic, Some(p.id()))
            }
            Err(e) => return Err(error::map(e, "metadata")),
        }
    }
    Ok(Writable::Yes)
}

/// What [`topic_writable`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Writable {
    /// Every partition's leader answered.
    Yes,
    /// Not yet, and why: worth asking again.
    NotYet(String),
}

/// A code that a topic still coming up answers with is `NotYet`; any other is the error.
fn not_yet_or_error(
    code: RDKafkaErrorCode,
    topic: &str,
    partition: Option<i32>,
) -> Result<Writable> {
    let what = match partition {
        Some(p) => format!("partition {p} of topic '{topic}'"),
        None => format!("topic '{topic}'"),
    };
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition
        | RDKafkaErrorCode::UnknownTopic
        | RDKafkaErrorCode::UnknownPartition
        | RDKafkaErrorCode::LeaderNotAvailable
        | RDKafkaErrorCode::NotLeaderForPartition
        | RDKafkaErrorCode::ReplicaNotAvailable
        | RDKafkaErrorCode::RequestTimedOut
        | RDKafkaErrorCode::OperationTimedOut
        | RDKafkaErrorCode::BrokerTransportFailure => {
            Ok(Writable::NotYet(format!("{what}: {code}")))
        }
        code => Err(error::map_code(code, what, "metadata")),
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
