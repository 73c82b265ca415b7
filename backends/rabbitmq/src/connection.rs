//! The connection: opening it, reopening it after a broker restart (replaying the declared
//! topology), and bounding every wait on the broker.
//!
//! **Every wait on the broker is bounded.** A broker that restarts can come back half-way: a
//! connection it accepted and then never answers, a method it never replies to, a confirm that
//! never comes. So each request/reply method goes through [`Connection::answer`], which waits at
//! most the connect timeout (less when the operation's budget, the reconnect timeout counted
//! from when the operation began, is nearly spent). A connection that leaves a method
//! unanswered for a whole connect timeout is given up ([`Link::retire`]): it is closed, and
//! every producer and consumer on it moves to a new one. An operation whose budget runs out
//! fails with a temporary `Timeout` or `Connection` error; a send hands its message back.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connect, ConnectionProperties};
use mailroom_core::operation::CONNECT;
use mailroom_core::{
    Binding, Capabilities, ClosedFlag, Error, ErrorKind, ExchangeSpec, QueueSpec, Result,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::RabbitConfig;
use crate::error::{is_connection_loss, map};
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

/// The end of one operation's budget: the reconnect timeout, counted from when it began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}

/// Why a step on the broker did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The broker refused it (a protocol error on a working connection): report it as it is.
    Refused(lapin::Error),
    /// The connection broke, or did not answer in time: another try may work.
    Lost(Lost),
}

/// A step lost to its connection: what happened, and whether it was silence (no answer in
/// time) rather than a broken connection, which decides the kind of the final error.
#[derive(Debug)]
pub(crate) struct Lost {
    pub why: String,
    pub silent: bool,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

/// What this backend declared, replayed after a reconnect and consulted by producers and
/// consumers (which queues are quorum queues, where a queue dead-letters to, which overflow).
#[derive(Default)]
pub(crate) struct Declared {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: HashMap<String, QueueSpec>,
    /// Queue names in declaration order, so dead-letter targets are re-declared first.
    pub queue_order: Vec<String>,
    pub bindings: Vec<Binding>,
}

/// What a consumer or producer needs to know about a queue this backend declared.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueSettings {
    pub quorum: bool,
    pub dead_letter_queue: Option<String>,
    pub max_length: Option<(u64, mailroom_core::Overflow)>,
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

    pub fn queue_settings(&self, queue: &str) -> QueueSettings {
        let declared = self.declared();
        match declared.queues.get(queue) {
            Some(spec) => QueueSettings {
                quorum: crate::topology::is_quorum(spec),
                dead_letter_queue: spec.dead_letter_queue.clone(),
                max_length: spec.max_length.map(|m| (m, spec.overflow)),
            },
            None => QueueSettings::default(),
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

    /// The budget of an operation that begins now.
    pub fn deadline(&self) -> Deadline {
        Deadline(Instant::now() + self.config.reconnect_timeout())
    }

    /// How long one step may wait for the broker: the connect timeout, or what is left of the
    /// operation's budget if that is less.
    pub fn step_wait(&self, deadline: Deadline) -> Duration {
        self.config.connect_timeout().min(deadline.remaining())
    }

    /// Await one request to the broker on `live`, bounded by [`Connection::step_wait`].
    ///
    /// A connection that leaves the request unanswered for the whole connect timeout is given
    /// up (the broker accepted it and went quiet: booting, frozen, or a stalled path), so the
    /// next try opens a new one. A wait cut short by the operation's budget gives nothing up:
    /// the caller is out of time, not the connection.
    pub async fn answer<T>(
        &self,
        live: &Arc<Link>,
        deadline: Deadline,
        what: &str,
        request: impl Future<Output = lapin::Result<T>>,
    ) -> std::result::Result<T, Failure> {
        let wait = self.step_wait(deadline);
        tokio::select! {
            // An answer that is already there wins over a connection given up at that moment.
            biased;
            answered = tokio::time::timeout(wait, request) => match answered {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) if is_connection_loss(&e) => {
                    self.forget(live);
                    Err(Failure::Lost(Lost { why: format!("{what}: {e}"), silent: false }))
                }
                Ok(Err(e)) => Err(Failure::Refused(e)),
                Err(_) => {
                    if wait >= self.config.connect_timeout() {
                        self.give_up(live, what, wait);
                    }
                    Err(Failure::Lost(Lost {
                        why: format!("RabbitMQ did not answer {what} within {wait:?}"),
                        silent: true,
                    }))
                }
            },
            () = live.retired() => Err(Failure::Lost(Lost {
                why: format!("{what}: the connection was given up"),
                silent: false,
            })),
        }
    }

    /// The error for an operation whose budget ran out, the last failure as its cause.
    pub fn gave_up(&self, operation: &'static str, last: &Lost) -> Error {
        let kind = if last.silent {
            ErrorKind::Timeout
        } else {
            ErrorKind::Connection
        };
        Error::new(
            kind,
            format!(
                "gave up on {operation} at {} after the reconnect timeout ({:?}); last: {last}",
                self.config.display_target(),
                self.config.reconnect_timeout()
            ),
        )
        .with_backend(BACKEND)
        .with_operation(operation)
    }

    /// Open one connection, bounded by the connect timeout (or the deadline); no retry.
    async fn dial(&self, deadline: Option<Deadline>) -> Result<lapin::Connection> {
        let target = self.config.display_target();
        let properties = ConnectionProperties::default().with_connection_name("mailroom".into());
        let runtime = lapin::runtime::default_runtime().map_err(|e| map(e, CONNECT, &target))?;
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

    /// Re-declare what this backend declared, each step bounded. A declaration the broker
    /// refuses is logged and skipped (it closed that channel; the rest go on a new one); a
    /// connection that breaks or does not answer fails the replay, so the caller tries another.
    async fn replay_topology(
        &self,
        live: &Arc<Link>,
        deadline: Deadline,
    ) -> std::result::Result<(), Lost> {
        let (exchanges, queues, bindings) = {
            let r = self.declared();
            let queues: Vec<QueueSpec> = r
                .queue_order
                .iter()
                .filter_map(|n| r.queues.get(n).cloned())
                .collect();
            (r.exchanges.clone(), queues, r.bindings.clone())
        };
        let mut channel: Option<Channel> = None;
        for spec in &exchanges {
            let ch = self.replay_channel(&mut channel, live, deadline).await?;
            let r = crate::topology::declare_exchange_on(&ch, spec);
            let r = self.answer(live, deadline, "exchange.declare", r).await;
            note(r, || format!("exchange {}", spec.name), &mut channel)?;
        }
        for spec in &queues {
            let Ok(args) = crate::topology::queue_arguments(spec) else {
                continue;
            };
            let ch = self.replay_channel(&mut channel, live, deadline).await?;
            let r = crate::topology::declare_queue_on(&ch, spec, args);
            let r = self.answer(live, deadline, "queue.declare", r).await;
            note(r, || format!("queue {}", spec.name), &mut channel)?;
        }
        for binding in &bindings {
            let ch = self.replay_channel(&mut channel, live, deadline).await?;
            let r = crate::topology::bind_on(&ch, binding);
            let r = self.answer(live, deadline, "queue.bind", r).await;
            note(
                r,
                || format!("binding of {} to {}", binding.queue, binding.exchange),
                &mut channel,
            )?;
        }
        Ok(())
    }

    /// The replay's channel, opened when there is none yet or the last one was closed.
    async fn replay_channel(
        &self,
        slot: &mut Option<Channel>,
        live: &Arc<Link>,
        deadline: Deadline,
    ) -> std::result::Result<Channel, Lost> {
        if let Some(ch) = slot.as_ref() {
            return Ok(ch.clone());
        }
        let open = live.conn.create_channel();
        match self.answer(live, deadline, "channel.open", open).await {
            Ok(ch) => {
                *slot = Some(ch.clone());
                Ok(ch)
            }
            Err(Failure::Lost(lost)) => Err(lost),
            Err(Failure::Refused(e)) => Err(Lost {
                why: format!("channel.open refused: {e}"),
                silent: false,
            }),
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

fn note(
    result: std::result::Result<(), Failure>,
    what: impl FnOnce() -> String,
    channel: &mut Option<Channel>,
) -> std::result::Result<(), Lost> {
    match result {
        Ok(()) => Ok(()),
        Err(Failure::Refused(e)) => {
            tracing::warn!(error = %e, what = what(), "could not re-declare after reconnect");
            // A refused declaration closes the channel; the rest need a new one.
            *channel = None;
            Ok(())
        }
        Err(Failure::Lost(lost)) => Err(lost),
    }
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
        _ => map(e, CONNECT, &target),
    };
    err.with_backend(BACKEND).with_operation(CONNECT)
}
