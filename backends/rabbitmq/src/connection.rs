//! The connection's life: opening it, reopening it (with backoff) after it broke or was given
//! up, channels on it, and closing it. Every wait in it is bounded through `bounded.rs`; after
//! a reconnect, what this backend declared is replayed through `declared.rs`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connect, ConnectionProperties};
use mailroom_core::operation::CONNECT;
use mailroom_core::{Capabilities, ClosedFlag, Error, ErrorKind, Result};
use tokio::sync::watch;

// Re-exported so every handle finds the connection's vocabulary in one place.
pub(crate) use crate::bounded::{close_within, Deadline, Failure, Lost};
use crate::config::RabbitConfig;
pub(crate) use crate::declared::{Declared, QueueSettings};
use crate::error::{is_connection_loss, map, tls_failure, TlsFailure};
use crate::BACKEND;

/// Pause before another try after a lost connection, so a broken connection that still reports
/// itself open is not retried in a tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One open AMQP connection and the generation it belongs to (bumped on every reconnect).
pub(crate) struct Link {
    pub generation: u64,
    pub conn: lapin::Connection,
    /// Set once the backend stopped using this connection. lapin tells its users about a
    /// connection that broke, but not about one that went silent: this tells them about both.
    retired: watch::Sender<bool>,
}

impl Link {
    fn new(generation: u64, conn: lapin::Connection) -> Self {
        Link {
            generation,
            conn,
            retired: watch::Sender::new(false),
        }
    }

    /// Open, and not given up by the backend.
    pub fn usable(&self) -> bool {
        !*self.retired.borrow() && self.conn.status().connected()
    }

    /// Resolves once the backend has given this connection up.
    pub async fn retired(&self) {
        let mut retired = self.retired.subscribe();
        // The sender lives as long as `self`, so this only returns once retired.
        let _ = retired.wait_for(|r| *r).await;
    }

    /// Stop using this connection; returns whether it was in use until now.
    fn retire(&self) -> bool {
        !self.retired.send_replace(true)
    }
}

/// The connection every handle of one backend shares: the current AMQP connection, reopened
/// after a broker restart, and what this backend declared.
pub(crate) struct Connection {
    pub config: RabbitConfig,
    pub capabilities: Capabilities,
    current: Mutex<Option<Arc<Link>>>,
    reconnect: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    closed: ClosedFlag,
    declared: Mutex<Declared>,
    tls: OwnedTLSConfig,
}

impl Connection {
    pub async fn open(config: RabbitConfig) -> Result<Arc<Self>> {
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
        let connection = Arc::new(Connection {
            capabilities: crate::capabilities(&config),
            config,
            current: Mutex::new(None),
            reconnect: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            closed: ClosedFlag::new(BACKEND),
            declared: Mutex::new(Declared::default()),
            tls,
        });
        let conn = connection.dial(None).await?;
        let generation = connection.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *connection.current() = Some(Arc::new(Link::new(generation, conn)));
        Ok(connection)
    }

    pub fn declared(&self) -> MutexGuard<'_, Declared> {
        // Updates are single collection operations: a poisoned lock still holds valid data.
        self.declared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> MutexGuard<'_, Option<Arc<Link>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current connection if it is usable. One that is not is retired here, so whoever
    /// still waits on it (a consumer for deliveries, an ack) stops waiting: lapin does not
    /// always tell them.
    fn usable_current(&self) -> Option<Arc<Link>> {
        let mut current = self.current();
        match current.as_ref() {
            Some(live) if live.usable() => Some(live.clone()),
            Some(live) => {
                live.retire();
                *current = None;
                None
            }
            None => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_closed()
    }

    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        self.closed.check_open(operation)
    }

    /// Refuse further operations and close the AMQP connection (bounded by the connect
    /// timeout); consumers waiting on it stop waiting and report the close.
    pub async fn close(&self) {
        self.closed.close();
        let live = self.current().take();
        if let Some(live) = live {
            // Consumers waiting for deliveries on it stop waiting and report the close.
            live.retire();
            if live.conn.status().connected() {
                let wait = self.config.connect_timeout();
                close_within(wait, "connection", live.conn.close(200, "OK".into())).await;
            }
        }
    }

    /// Open one connection, bounded by the connect timeout (or the deadline); no retry.
    async fn dial(&self, deadline: Option<Deadline>) -> Result<lapin::Connection> {
        let target = self.config.display_target();
        let properties = ConnectionProperties::default().with_connection_name("mailroom".into());
        let runtime = crate::runtime::runtime().ok_or_else(|| {
            Error::new(
                ErrorKind::Connection,
                format!("cannot connect to {target}: not inside a tokio runtime"),
            )
            .with_backend(BACKEND)
            .with_operation(CONNECT)
        })?;
        let attempt =
            self.config
                .amqp_uri()
                .connect_with_config(properties, self.tls.clone(), runtime);
        let wait = match deadline {
            Some(deadline) => self.step_wait(deadline),
            None => self.config.connect_timeout(),
        };
        match tokio::time::timeout(wait, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(e, &self.config)),
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                format!("could not connect to {target} within {wait:?}"),
            )
            .with_backend(BACKEND)
            .with_operation(CONNECT)),
        }
    }

    /// The open connection, reconnecting (with backoff, until `deadline`) when the last one
    /// broke or was given up. After a reconnect the declared topology is replayed; a new
    /// connection that does not answer the replay is given up and another one tried.
    pub async fn connection(&self, deadline: Deadline) -> Result<Arc<Link>> {
        self.check_open(CONNECT)?;
        if let Some(live) = self.usable_current() {
            return Ok(live);
        }
        // The holder of the lock is bounded by its own deadline; this wait by ours.
        let Ok(_one_at_a_time) =
            tokio::time::timeout(deadline.remaining(), self.reconnect.lock()).await
        else {
            let last = Lost {
                why: "another reconnect was still under way".into(),
                silent: true,
            };
            return Err(self.gave_up("reconnect", &last));
        };
        if let Some(live) = self.usable_current() {
            return Ok(live);
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            self.check_open(CONNECT)?;
            let attempt = match self.dial(Some(deadline)).await {
                Ok(conn) => {
                    let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    let live = Arc::new(Link::new(generation, conn));
                    tracing::info!(generation, "reconnected to RabbitMQ");
                    match self.replay_topology(&live, deadline).await {
                        Ok(()) => Ok(live),
                        Err(lost) => {
                            self.give_up(&live, "the topology replay", Duration::ZERO);
                            Err(self.gave_up("reconnect", &lost))
                        }
                    }
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(live) => {
                    *self.current() = Some(live.clone());
                    return Ok(live);
                }
                Err(e) if deadline.remaining() <= backoff => {
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "gave up reconnecting to {} after {:?}",
                            self.config.display_target(),
                            self.config.reconnect_timeout()
                        ),
                    )
                    .set_temporary(true)
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

    /// A fresh channel, on a new connection if the current one broke or does not answer.
    pub async fn channel(&self, deadline: Deadline) -> Result<(Arc<Link>, Channel)> {
        loop {
            let live = self.connection(deadline).await?;
            let open = live.conn.create_channel();
            match self.answer(&live, deadline, "channel.open", open).await {
                Ok(ch) => return Ok((live, ch)),
                Err(Failure::Refused(e)) => return Err(map(e, "open_channel", "the connection")),
                Err(Failure::Lost(lost)) if deadline.passed() => {
                    return Err(self.gave_up("open_channel", &lost))
                }
                Err(Failure::Lost(lost)) => {
                    tracing::debug!(%lost, "no channel; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Run `op` on a fresh channel, again on a new connection if the connection broke or went
    /// silent under it (until the reconnect timeout). Protocol errors are returned as they are.
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
        let deadline = self.deadline();
        loop {
            let (live, channel) = self
                .channel(deadline)
                .await
                .map_err(|e| e.with_operation(operation))?;
            match self.answer(&live, deadline, operation, op(channel)).await {
                Ok(v) => return Ok(v),
                Err(Failure::Refused(e)) => return Err(map(e, operation, what)),
                Err(Failure::Lost(lost)) if deadline.passed() => {
                    return Err(self.gave_up(operation, &lost))
                }
                Err(Failure::Lost(lost)) => {
                    tracing::debug!(%lost, operation, "connection lost; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Stop using `live` if it broke, so the next call reconnects. (A closed channel alone
    /// leaves its connection in use.)
    pub fn forget(&self, live: &Link) {
        if !live.conn.status().connected() {
            self.drop_current(live);
            live.retire();
        }
    }

    /// Give up a connection that did not answer: every user of it moves to a new one, and it
    /// is closed without waiting for the broker to agree.
    pub fn give_up(&self, live: &Arc<Link>, what: &str, wait: Duration) {
        self.drop_current(live);
        if live.retire() {
            tracing::warn!(
                backend = BACKEND,
                generation = live.generation,
                ?wait,
                "RabbitMQ did not answer {what}; reconnecting"
            );
            let live = live.clone();
            let wait = self.config.connect_timeout();
            tokio::spawn(async move {
                let close = live.conn.close(320, "unresponsive".into());
                close_within(wait, "unresponsive connection", close).await;
            });
        }
    }

    fn drop_current(&self, live: &Link) {
        let mut current = self.current();
        if current
            .as_ref()
            .is_some_and(|c| c.generation == live.generation)
        {
            *current = None;
        }
    }
}

/// A failed first connect, explained for a new user: refused login, unknown vhost, no broker.
fn connect_error(e: lapin::Error, config: &RabbitConfig) -> Error {
    let target = config.display_target();
    if let Some(failure) = tls_failure(&e) {
        return Error::new(ErrorKind::Tls, tls_message(&failure, config))
            .set_temporary(false)
            .with_source(e)
            .with_backend(BACKEND)
            .with_operation(CONNECT);
    }
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
        // The peer answered, but not in AMQP 0-9-1 (an HTTP server, the management port, a
        // TLS listener for amqp://): lapin's own text is a parser trace.
        _ if matches!(
            e.kind(),
            lapin::ErrorKind::ParsingError(_) | lapin::ErrorKind::InvalidProtocolVersion(_)
        ) =>
        {
            Error::new(
                ErrorKind::Connection,
                format!(
                    "{}:{} answered, but not as an AMQP 0-9-1 broker: is it the right port? \
                     (RabbitMQ listens for amqp:// on 5672 and amqps:// on 5671; 15672 is its \
                     HTTP management port)",
                    config.host, config.port
                ),
            )
            .set_temporary(false)
        }
        _ if is_connection_loss(&e) => Error::new(
            ErrorKind::Connection,
            format!("could not connect to RabbitMQ at {target} (is it running and reachable?)"),
        )
        .with_source(e),
        _ => map(e, CONNECT, &target),
    };
    err.with_backend(BACKEND).with_operation(CONNECT)
}

/// What a failed TLS handshake means and what to fix, naming the host and the trust roots.
fn tls_message(failure: &TlsFailure, config: &RabbitConfig) -> String {
    let target = config.display_target();
    let roots = match &config.ca_file {
        Some(path) => format!("ca_file {} and the system's roots", path.display()),
        None => "the system's roots (no ca_file)".to_owned(),
    };
    match failure {
        TlsFailure::Untrusted => format!(
            "the TLS certificate of RabbitMQ at {target} is not trusted: no CA in {roots} \
             signed it; set ?ca_file= to the CA that did"
        ),
        TlsFailure::NameMismatch => format!(
            "the TLS certificate of RabbitMQ at {target} does not name host '{}' (hostname \
             mismatch): connect by a name the certificate lists, or fix the broker's certificate",
            config.host
        ),
        TlsFailure::Certificate(why) => format!(
            "the TLS certificate of RabbitMQ at {target} was refused ({why}); trusted roots: \
             {roots}"
        ),
        TlsFailure::NotTls => format!(
            "RabbitMQ at {target} did not answer the TLS handshake with TLS: port {} is not a \
             TLS listener (use amqp:// for a plain one, or the broker's TLS port, 5671 by default)",
            config.port
        ),
    }
}
