//! The connection: opening it, reopening it after a broker restart, and the Backend over it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connect, ConnectionProperties};
use mailroom_core::{
    Backend, Binding, Capabilities, Consumer, ConsumerOptions, Error, ErrorKind, ExchangeSpec,
    Producer, QueueSpec, Result, Topology,
};
use tokio::time::Instant;

use crate::config::RabbitConfig;
use crate::consumer::RabbitConsumer;
use crate::error::{is_connection_loss, map};
use crate::producer::RabbitProducer;
use crate::topology::RabbitTopology;
use crate::BACKEND;

/// One open AMQP connection and the generation it belongs to (bumped on every reconnect).
pub(crate) struct Live {
    pub generation: u64,
    pub conn: lapin::Connection,
}

/// What this backend declared, replayed after a reconnect and consulted by producers and
/// consumers (which queues are quorum queues, where a queue dead-letters to, which overflow).
#[derive(Default)]
pub(crate) struct Registry {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: HashMap<String, QueueSpec>,
    /// Queue names in declaration order, so dead-letter targets are re-declared first.
    pub queue_order: Vec<String>,
    pub bindings: Vec<Binding>,
}

/// What a consumer or producer needs to know about a queue this backend declared.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueFacts {
    pub quorum: bool,
    pub dead_letter_queue: Option<String>,
    pub max_length: Option<(u64, mailroom_core::Overflow)>,
}

/// The state shared by the backend, its producers, consumers and topology handle.
pub(crate) struct Shared {
    pub config: RabbitConfig,
    pub capabilities: Capabilities,
    current: Mutex<Option<Arc<Live>>>,
    reconnect: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    closed: AtomicBool,
    registry: Mutex<Registry>,
    tls: OwnedTLSConfig,
}

impl Shared {
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        // Registry updates are single collection operations: a poisoned lock still holds valid data.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> MutexGuard<'_, Option<Arc<Live>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn queue_facts(&self, queue: &str) -> QueueFacts {
        let registry = self.registry();
        match registry.queues.get(queue) {
            Some(spec) => QueueFacts {
                quorum: crate::topology::is_quorum(spec),
                dead_letter_queue: spec.dead_letter_queue.clone(),
                max_length: spec.max_length.map(|m| (m, spec.overflow)),
            },
            None => QueueFacts::default(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.is_closed() {
            Err(Error::closed("the RabbitMQ backend has been closed")
                .with_backend(BACKEND)
                .with_operation(operation))
        } else {
            Ok(())
        }
    }

    /// Open one connection, bounded by the connect timeout; no retry.
    async fn open(&self) -> Result<lapin::Connection> {
        let target = self.config.display_target();
        let properties = ConnectionProperties::default().with_connection_name("mailroom".into());
        let runtime = lapin::runtime::default_runtime().map_err(|e| map(e, "connect", &target))?;
        let attempt =
            self.config
                .amqp_uri()
                .connect_with_config(properties, self.tls.clone(), runtime);
        match tokio::time::timeout(self.config.connect_timeout(), attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(e, &self.config)),
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "could not connect to {target} within {:?}",
                    self.config.connect_timeout()
                ),
            )
            .with_backend(BACKEND)
            .with_operation("connect")),
        }
    }

    /// The open connection, reconnecting (with backoff, up to the reconnect timeout) when the
    /// last one broke. After a reconnect the declared topology is replayed.
    pub async fn connection(&self) -> Result<Arc<Live>> {
        self.check_open("connect")?;
        if let Some(live) = self.current().as_ref() {
            if live.conn.status().connected() {
                return Ok(live.clone());
            }
        }
        let _one_at_a_time = self.reconnect.lock().await;
        if let Some(live) = self.current().as_ref() {
            if live.conn.status().connected() {
                return Ok(live.clone());
            }
        }
        let deadline = Instant::now() + self.config.reconnect_timeout();
        let mut backoff = Duration::from_millis(100);
        loop {
            self.check_open("connect")?;
            match self.open().await {
                Ok(conn) => {
                    let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    let live = Arc::new(Live { generation, conn });
                    if generation > 1 {
                        tracing::info!(generation, "reconnected to RabbitMQ");
                        // A broker still booting can accept the connection and never answer
                        // channel.open; waiting for it would hold every caller on the
                        // reconnect lock forever, so such a connection counts as a failed try.
                        let wait = self.config.connect_timeout();
                        if tokio::time::timeout(wait, self.replay_topology(&live))
                            .await
                            .is_err()
                        {
                            tracing::warn!(
                                ?wait,
                                "RabbitMQ did not answer on a new connection; reconnecting"
                            );
                            abandon(live);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    }
                    *self.current() = Some(live.clone());
                    return Ok(live);
                }
                Err(e) if Instant::now() + backoff > deadline => {
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "gave up reconnecting to {} after {:?}",
                            self.config.display_target(),
                            self.config.reconnect_timeout()
                        ),
                    )
                    .with_backend(BACKEND)
                    .with_operation("reconnect")
                    .with_source(e));
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?backoff, "reconnect attempt failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A fresh channel on the current connection.
    pub async fn channel(&self) -> Result<(u64, Channel)> {
        let deadline = Instant::now() + self.config.reconnect_timeout();
        loop {
            let live = self.connection().await?;
            let wait = self.config.connect_timeout();
            match tokio::time::timeout(wait, live.conn.create_channel()).await {
                Ok(Ok(ch)) => return Ok((live.generation, ch)),
                Ok(Err(e)) => return Err(map(e, "open channel", "the connection")),
                Err(_) if Instant::now() < deadline => {
                    // No answer to channel.open: the connection is unusable, open another.
                    tracing::warn!(?wait, "RabbitMQ did not open a channel; reconnecting");
                    {
                        let mut current = self.current();
                        if current
                            .as_ref()
                            .is_some_and(|c| c.generation == live.generation)
                        {
                            *current = None;
                        }
                    }
                    abandon(live);
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("RabbitMQ did not open a channel within {wait:?}"),
                    )
                    .with_backend(BACKEND)
                    .with_operation("open channel"))
                }
            }
        }
    }

    /// Run `op` on a fresh channel, again on a new connection if the connection broke under it
    /// (until the reconnect timeout). Protocol errors are returned as they are.
    pub async fn with_channel<T, F, Fut>(
        &self,
        operation: &'static str,
        what: &str,
        op: F,
    ) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let deadline = Instant::now() + self.config.reconnect_timeout();
        loop {
            let (_, channel) = self
                .channel()
                .await
                .map_err(|e| e.with_operation(operation))?;
            match op(channel).await {
                Ok(v) => return Ok(v),
                Err(e) if is_connection_loss(&e) && Instant::now() < deadline => {
                    tracing::debug!(error = %e, operation, "connection lost; retrying");
                    self.forget_broken();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(map(e, operation, what)),
            }
        }
    }

    /// Drop the current connection if it is no longer usable, so the next call reconnects.
    pub fn forget_broken(&self) {
        let mut current = self.current();
        if current
            .as_ref()
            .is_some_and(|live| !live.conn.status().connected())
        {
            *current = None;
        }
    }

    async fn replay_topology(&self, live: &Live) {
        let (exchanges, queues, bindings) = {
            let r = self.registry();
            let queues: Vec<QueueSpec> = r
                .queue_order
                .iter()
                .filter_map(|n| r.queues.get(n).cloned())
                .collect();
            (r.exchanges.clone(), queues, r.bindings.clone())
        };
        let Ok(channel) = live.conn.create_channel().await else {
            return;
        };
        let mut channel = Some(channel);
        for spec in &exchanges {
            let Some(ch) = channel_or_new(&mut channel, live).await else {
                return;
            };
            let r = crate::topology::declare_exchange_on(&ch, spec).await;
            note(r, || format!("exchange {}", spec.name), &mut channel);
        }
        for spec in &queues {
            let Some(ch) = channel_or_new(&mut channel, live).await else {
                return;
            };
            let r = match crate::topology::queue_arguments(spec) {
                Ok(args) => crate::topology::declare_queue_on(&ch, spec, args).await,
                Err(_) => Ok(()),
            };
            note(r, || format!("queue {}", spec.name), &mut channel);
        }
        for binding in &bindings {
            let Some(ch) = channel_or_new(&mut channel, live).await else {
                return;
            };
            let r = crate::topology::bind_on(&ch, binding).await;
            note(
                r,
                || format!("binding of {} to {}", binding.queue, binding.exchange),
                &mut channel,
            );
        }
    }
}

/// Wait at most `wait` for the broker to answer a close (of a connection or a channel).
///
/// Why: lapin's close future resolves on the broker's CloseOk, so a broker that went silent
/// without hanging up (a frozen host, a stalled path, and no heartbeat yet) held `close`
/// forever. Giving up drops the handle; the broker requeues whatever was unacked on it once it
/// notices the connection is gone, so nothing is lost.
pub(crate) async fn close_within(
    wait: Duration,
    what: &str,
    close: impl Future<Output = lapin::Result<()>>,
) {
    if tokio::time::timeout(wait, close).await.is_err() {
        tracing::warn!(
            backend = BACKEND,
            ?wait,
            "no answer to the {what} close in time; dropping it"
        );
    }
}

/// Close a connection that stopped answering, without waiting for the broker to agree.
fn abandon(live: Arc<Live>) {
    tokio::spawn(async move {
        let close = live.conn.close(320, "unresponsive".into());
        close_within(Duration::from_secs(1), "unresponsive connection", close).await;
    });
}

fn note(result: lapin::Result<()>, what: impl FnOnce() -> String, channel: &mut Option<Channel>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, what = what(), "could not re-declare after reconnect");
        // A failed declaration closes the channel; the rest need a new one.
        *channel = None;
    }
}

async fn channel_or_new(slot: &mut Option<Channel>, live: &Live) -> Option<Channel> {
    if slot.is_none() {
        *slot = live.conn.create_channel().await.ok();
    }
    slot.clone()
}

/// A failed first connect, explained for a new user: refused login, unknown vhost, no broker.
fn connect_error(e: lapin::Error, config: &RabbitConfig) -> Error {
    let target = config.display_target();
    let code = crate::error::reply_code(&e);
    let err = match code {
        Some(403) => Error::new(
            ErrorKind::Auth,
            format!(
                "RabbitMQ at {target} refused the login of user '{}': check the user name and \
                 password",
                config.username
            ),
        )
        .with_source(e),
        Some(530) => Error::new(
            ErrorKind::Auth,
            format!(
                "RabbitMQ at {target} refused access to vhost '{}': the vhost does not exist or \
                 user '{}' has no permissions on it",
                config.vhost, config.username
            ),
        )
        .with_source(e),
        _ if is_connection_loss(&e) => Error::new(
            ErrorKind::Connection,
            format!("could not connect to RabbitMQ at {target} (is it running and reachable?)"),
        )
        .with_source(e),
        _ => map(e, "connect", &target),
    };
    err.with_backend(BACKEND).with_operation("connect")
}

/// A connection to RabbitMQ: the source of producers, consumers and the topology API.
///
/// Producers and consumers share its AMQP connection (each on its own channel). When the
/// connection breaks, the next operation reconnects with backoff, re-declares what this backend
/// declared, and carries on.
pub struct RabbitBackend {
    shared: Arc<Shared>,
    topology: RabbitTopology,
}

impl RabbitBackend {
    /// Connect with a typed config. Fails at once (no retry) on a refused login, an unknown
    /// vhost or an unreachable broker.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        config.validate()?;
        let tls = match &config.ca_file {
            Some(path) => {
                let pem = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || std::fs::read_to_string(path)
                })
                .await
                .map_err(|e| Error::config(format!("reading ca_file failed: {e}")))?
                .map_err(|e| {
                    Error::config(format!("cannot read ca_file {}: {e}", path.display()))
                })?;
                OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(pem),
                }
            }
            None => OwnedTLSConfig::default(),
        };
        let shared = Arc::new(Shared {
            capabilities: crate::capabilities(&config),
            config,
            current: Mutex::new(None),
            reconnect: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            registry: Mutex::new(Registry::default()),
            tls,
        });
        let conn = shared.open().await?;
        let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *shared.current() = Some(Arc::new(Live { generation, conn }));
        Ok(RabbitBackend {
            topology: RabbitTopology::new(shared.clone()),
            shared,
        })
    }

    /// Connect to an `amqp://` or `amqps://` URL (see [`RabbitConfig::from_url`]).
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(RabbitConfig::from_url(url)?).await
    }

    /// The configuration this backend was opened with.
    pub fn config(&self) -> &RabbitConfig {
        &self.shared.config
    }

    /// A producer with its concrete type (for its extra methods).
    pub async fn rabbit_producer(&self) -> Result<RabbitProducer> {
        self.shared.check_open("producer")?;
        Ok(RabbitProducer::new(self.shared.clone()))
    }
}

impl std::fmt::Debug for RabbitBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBackend")
            .field("config", &self.shared.config)
            .finish()
    }
}

#[async_trait]
impl Backend for RabbitBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn server_version(&self) -> Result<String> {
        let config = &self.shared.config;
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

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(
            RabbitConsumer::open(self.shared.clone(), queue, options).await?,
        ))
    }

    fn topology(&self) -> &dyn Topology {
        &self.topology
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let live = self.shared.current().take();
        if let Some(live) = live {
            if live.conn.status().connected() {
                let wait = self.shared.config.connect_timeout();
                close_within(wait, "connection", live.conn.close(200, "OK".into())).await;
            }
        }
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
