//! Publishing with publisher confirms: a bounded window of unconfirmed messages, re-sent after a
//! reconnect until the broker confirms them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, PublisherConfirm};
use mailroom_core::operation::SEND;
use mailroom_core::topology::validate_name;
use mailroom_core::{
    Destination, Error, ErrorKind, Message, MessageParts, Overflow, PendingConfirm, Producer,
    Receipt, Result,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::codec::{self, Stamp};
use crate::connection::{close_within, Connection, Deadline, Failure, Link, Lost};
use crate::error::{is_connection_loss, map};
use crate::BACKEND;

/// How often a delay queue is re-declared while in use, so its `x-expires` never runs out.
const DELAY_QUEUE_REFRESH: Duration = Duration::from_secs(60);
/// How often a message refused by a full `Backpressure` queue is offered again, at most.
const FULL_QUEUE_RETRY_MAX: Duration = Duration::from_millis(500);
/// How many times a send is re-published after its channel was closed by a channel error.
const CHANNEL_ERROR_RETRIES: u32 = 3;
/// Pause before publishing again after a lost connection or channel.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A producer on RabbitMQ.
///
/// Publisher confirms are always on. `enqueue` waits for room in the window of unconfirmed
/// messages (`confirm_window`; at most `reconnect_timeout_ms`, then `Timeout`), publishes, and
/// returns a pending confirm that resolves on the broker's ack. A broker nack is `QueueFull` (a
/// bounded queue refused it) or `Rejected`; a mandatory message no queue took is `NotFound`
/// (queue destination) or `Unroutable` (exchange). When the connection breaks, or a confirm
/// does not come within `connect_timeout_ms` of its publish, the message is re-published on a
/// new channel (so it can arrive twice, never zero times) until `reconnect_timeout_ms` passes
/// without an answer from the broker. Every failure hands the message back in the error.
pub struct RabbitProducer {
    inner: Arc<Inner>,
}

/// A published message whose confirm the driver awaits.
struct Job {
    send: Send,
    published: Published,
    /// Its place in the window, released once the outcome is known.
    permit: OwnedSemaphorePermit,
    tx: oneshot::Sender<Result<Receipt>>,
}

/// The producer's confirm channel and the connection it is on.
#[derive(Clone)]
struct ConfirmChannel {
    live: Arc<Link>,
    channel: Channel,
    /// Numbers the producer's channels, so a confirm that never came discards the channel it
    /// was published on and not a newer one.
    epoch: u64,
}

/// A message handed to the broker, whose confirm is awaited.
struct Published {
    confirm: PublisherConfirm,
    live: Arc<Link>,
    epoch: u64,
    at: Instant,
}

/// How the wait for a confirm ended.
// Boxing the answer would cost an allocation per confirm on the fast path to save a move of a
// few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Verdict {
    /// What the broker said, or the error lapin raised for the channel or connection.
    Answer(lapin::Result<Confirmation>),
    /// No confirm within the connect timeout, or the connection was given up meanwhile.
    Silent(Lost),
}

/// Wait for a confirm at most `connect_timeout` from its publish.
///
/// Why bounded: a confirm is the broker's answer to a publish like any other, and a broker
/// that came back from a restart half-way (or a path that stalled) never sends it; waiting for
/// it held the window, then every `enqueue` and `flush`, forever.
async fn await_verdict(
    published: Published,
    connect_timeout: Duration,
) -> (Verdict, Arc<Link>, u64) {
    let Published {
        confirm,
        live,
        epoch,
        at,
    } = published;
    let wait = connect_timeout.saturating_sub(at.elapsed());
    let verdict = tokio::select! {
        // A confirm that is already there wins over a connection given up at the same moment.
        biased;
        answer = tokio::time::timeout(wait, confirm) => match answer {
            Ok(answer) => Verdict::Answer(answer),
            Err(_) => Verdict::Silent(Lost {
                why: format!("no confirm within {connect_timeout:?} of the publish"),
                silent: true,
            }),
        },
        () = live.retired() => Verdict::Silent(Lost {
            why: "the connection was given up before the confirm came".into(),
            silent: false,
        }),
    };
    (verdict, live, epoch)
}

/// Awaits confirms in publish order (the order the broker sends them), so a window of
/// unconfirmed messages costs one task and one wake-up per confirm instead of a task each.
/// Anything but a plain ack (a lost connection to re-publish across, a refusal to explain, a
/// confirm that did not come in time) moves to a task of its own so the rest of the window is
/// not held up. Each wait is bounded (see [`await_verdict`]), and the deadlines of a window
/// published together run out together, so a silent broker costs the window one connect
/// timeout, not one per message.
///
/// The queue is unbounded in type only: every job holds a permit of the producer's window.
async fn drive(
    inner: Weak<Inner>,
    connect_timeout: Duration,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        let Job {
            send,
            published,
            permit,
            tx,
        } = job;
        match await_verdict(published, connect_timeout).await {
            (Verdict::Answer(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)), _, _) => {
                drop(permit);
                let _ = tx.send(Ok(Receipt::new(send.message.id().clone())));
            }
            (verdict, live, epoch) => match inner.upgrade() {
                Some(inner) => {
                    tokio::spawn(async move {
                        let result = inner.await_confirm(send, verdict, live, epoch).await;
                        drop(permit);
                        let _ = tx.send(result);
                    });
                }
                None => {
                    drop(permit);
                    let _ = tx.send(Err(Error::closed(
                        "the producer was dropped before the broker confirmed the message",
                    )
                    .with_backend(BACKEND)
                    .with_operation(SEND)
                    .with_undelivered(send.message)));
                }
            },
        }
    }
}

struct Inner {
    me: Weak<Inner>,
    driver: OnceLock<mpsc::UnboundedSender<Job>>,
    connection: Arc<Connection>,
    channel: tokio::sync::Mutex<Option<ConfirmChannel>>,
    /// The last epoch handed out to a confirm channel.
    epochs: AtomicU64,
    /// Channels of a lower epoch are not published on any more.
    trusted_from: AtomicU64,
    window: Arc<Semaphore>,
    window_size: u32,
    closed: AtomicBool,
    known_exchanges: Mutex<HashSet<String>>,
    delay_queues: Mutex<HashMap<String, Instant>>,
}

impl RabbitProducer {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        let window_size = connection.config.confirm_window.min(1_000_000) as u32;
        RabbitProducer {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                driver: OnceLock::new(),
                window: Arc::new(Semaphore::new(window_size as usize)),
                window_size,
                connection,
                channel: tokio::sync::Mutex::new(None),
                epochs: AtomicU64::new(0),
                trusted_from: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                known_exchanges: Mutex::new(HashSet::new()),
                delay_queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Enqueue with an attempt number stamped on (used by client-side requeues).
    pub(crate) async fn enqueue_stamped(
        &self,
        destination: &Destination,
        message: Message,
        attempt: u32,
    ) -> Result<PendingConfirm> {
        let inner = &self.inner;
        let context = |e: Error| e.with_backend(BACKEND).with_operation(SEND);
        if inner.closed.load(Ordering::Acquire) {
            return Err(context(Error::closed("producer is closed")).with_undelivered(message));
        }
        if let Err(e) = inner.connection.check_open(SEND) {
            return Err(e.with_undelivered(message));
        }
        if let Err(e) = validate_name("destination", destination.name()) {
            return Err(context(e).with_undelivered(message));
        }
        if let Err(e) = inner
            .connection
            .capabilities
            .check_message(&message, BACKEND, SEND)
        {
            return Err(e.with_undelivered(message));
        }
        // The window frees up as confirms come or their bounded waits end; this wait is bounded
        // too, by the same budget a reconnect has.
        let deadline = inner.connection.deadline();
        // Room is usually there: take it without arming a timer.
        let permit = match inner.window.clone().try_acquire_owned() {
            Ok(p) => Ok(Ok(p)),
            Err(_) => {
                let acquire = inner.window.clone().acquire_owned();
                tokio::time::timeout(deadline.remaining(), acquire).await
            }
        };
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return Err(context(Error::closed("producer is closed")).with_undelivered(message))
            }
            Err(_) => {
                let e = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no room in the confirm window ({} unconfirmed) within {:?}",
                        inner.window_size,
                        inner.connection.config.reconnect_timeout()
                    ),
                );
                return Err(context(e).with_undelivered(message));
            }
        };
        let send = Send::new(
            destination.clone(),
            message,
            attempt,
            inner.connection.config.persistent,
        );
        let send = match inner.prepare(send).await {
            Ok(send) => send,
            Err((e, message)) => return Err(e.with_undelivered(message)),
        };
        let published = match inner.publish(&send, deadline).await {
            Ok(p) => p,
            Err(e) => return Err(e.with_undelivered(send.message)),
        };
        let (tx, rx) = oneshot::channel();
        let job = Job {
            send,
            published,
            permit,
            tx,
        };
        if let Err(mpsc::error::SendError(job)) = inner.driver().send(job) {
            // The driver only stops when the producer is gone; this producer is not.
            return Err(
                context(Error::closed("producer is closed")).with_undelivered(job.send.message)
            );
        }
        Ok(PendingConfirm::waiting(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Broker,
                    "the confirm task ended without a result (runtime shutting down?)",
                )
                .with_backend(BACKEND)
                .with_operation(SEND))
            })
        }))
    }
}

/// One message on its way: where it goes and what it is published as.
struct Send {
    destination: Destination,
    message: Message,
    stamp: Stamp,
    /// (exchange, routing key) actually published to: the destination, or its delay queue.
    exchange: ShortString,
    routing_key: ShortString,
}

impl Send {
    fn new(destination: Destination, mut message: Message, attempt: u32, persistent: bool) -> Self {
        let (exchange, routing_key) = match &destination {
            Destination::Queue(q) => (String::new(), q.to_string()),
            Destination::Exchange { name, routing_key } => {
                (name.to_string(), routing_key.to_string())
            }
        };
        let delayed = message.delay().is_some_and(|d| !d.is_zero());
        if !delayed {
            message.clear_delay();
        }
        Send {
            destination,
            message,
            stamp: Stamp {
                persistent,
                attempt,
                delayed,
            },
            // Names were validated to at most 255 bytes; routing keys beyond that are refused
            // by the broker anyway.
            exchange: ShortString::try_new(exchange).unwrap_or_default(),
            routing_key: ShortString::try_new(routing_key).unwrap_or_default(),
        }
    }
}

impl Inner {
    /// Check the destination exchange exists, and route a delayed message to its delay queue.
    async fn prepare(&self, mut send: Send) -> std::result::Result<Send, (Error, Message)> {
        if let Destination::Exchange { name, .. } = &send.destination {
            if let Err(e) = self.check_exchange(name).await {
                return Err((e, send.message));
            }
        }
        if let Some(delay) = send.message.delay() {
            match self.delay_queue(&send.destination, delay).await {
                Ok(queue) => {
                    send.exchange = ShortString::default();
                    send.routing_key = ShortString::try_new(queue).unwrap_or_default();
                    send.message.clear_delay();
                }
                Err(e) => return Err((e, send.message)),
            }
        }
        Ok(send)
    }

    /// A publish to a missing exchange makes the broker close the channel, failing every other
    /// unconfirmed message on it; a passive declare on a side channel finds out first.
    async fn check_exchange(&self, name: &str) -> Result<()> {
        if self.lock_exchanges().contains(name) {
            return Ok(());
        }
        let what = format!("exchange '{name}'");
        self.connection
            .with_channel(SEND, &what, |ch| async move {
                ch.exchange_declare(
                    name.into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await?;
        self.lock_exchanges().insert(name.to_owned());
        Ok(())
    }

    fn lock_exchanges(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known_exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_delays(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.delay_queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn delay_queue(&self, destination: &Destination, delay: Duration) -> Result<String> {
        let (name, _) = crate::topology::delay_queue(destination, delay);
        let fresh = self
            .lock_delays()
            .get(&name)
            .is_some_and(|at| at.elapsed() < DELAY_QUEUE_REFRESH);
        if fresh {
            return Ok(name);
        }
        let what = format!("delay queue '{name}'");
        let name = self
            .connection
            .with_channel(SEND, &what, |ch| async move {
                crate::topology::declare_delay_queue(&ch, destination, delay).await
            })
            .await?;
        self.lock_delays().insert(name.clone(), Instant::now());
        Ok(name)
    }

    /// The producer's confirm channel, reopened (and the connection with it) when it broke,
    /// went silent, or was discarded after a confirm that never came.
    async fn channel(&self, deadline: Deadline) -> Result<ConfirmChannel> {
        // Whoever holds the slot is reopening it, bounded by their own deadline. The slot is
        // usually free: take it without arming a timer.
        let slot = match self.channel.try_lock() {
            Ok(slot) => Ok(slot),
            Err(_) => tokio::time::timeout(deadline.remaining(), self.channel.lock()).await,
        };
        let Ok(mut slot) = slot else {
            let last = Lost {
                why: "the producer channel was still being reopened".into(),
                silent: true,
            };
            return Err(self.connection.gave_up(SEND, &last));
        };
        if let Some(cc) = slot.as_ref() {
            let trusted = cc.epoch >= self.trusted_from.load(Ordering::Acquire);
            if trusted && cc.live.usable() && cc.channel.status().connected() {
                return Ok(cc.clone());
            }
        }
        if let Some(old) = slot.take() {
            if old.channel.status().connected() {
                // Its unconfirmed messages are re-published elsewhere; closing it tells the
                // broker to stop sending for it.
                let wait = self.connection.config.connect_timeout();
                tokio::spawn(async move {
                    close_within(wait, "channel", old.channel.close(200, "OK".into())).await;
                });
            }
        }
        loop {
            let (live, ch) = self.connection.channel(deadline).await?;
            let select = ch.confirm_select(ConfirmSelectOptions::default());
            match self
                .connection
                .answer(&live, deadline, "confirm.select", select)
                .await
            {
                Ok(()) => {
                    let epoch = self.epochs.fetch_add(1, Ordering::AcqRel) + 1;
                    let cc = ConfirmChannel {
                        live,
                        channel: ch,
                        epoch,
                    };
                    *slot = Some(cc.clone());
                    return Ok(cc);
                }
                Err(Failure::Refused(e)) => {
                    return Err(map(e, "confirm_select", "the producer channel"))
                }
                Err(Failure::Lost(lost)) if deadline.passed() => {
                    return Err(self.connection.gave_up(SEND, &lost))
                }
                Err(Failure::Lost(lost)) => {
                    tracing::debug!(%lost, "no confirm channel; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Stop publishing on the channel of `epoch` (and older ones).
    fn discard(&self, epoch: u64) {
        self.trusted_from.fetch_max(epoch + 1, Ordering::AcqRel);
    }

    /// Publish once the connection allows, retrying across reconnects until the deadline.
    async fn publish(&self, send: &Send, deadline: Deadline) -> Result<Published> {
        loop {
            let cc = self.channel(deadline).await?;
            // lapin resolves a publish once its frames are written: a connection that takes a
            // connect timeout to take them is as silent as one that does not answer.
            let publish = cc.channel.basic_publish(
                send.exchange.clone(),
                send.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: self.connection.config.mandatory,
                    immediate: false,
                },
                send.message.payload(),
                codec::properties(&send.message, send.stamp),
            );
            match self
                .connection
                .answer(&cc.live, deadline, "basic.publish", publish)
                .await
            {
                Ok(confirm) => {
                    return Ok(Published {
                        confirm,
                        live: cc.live,
                        epoch: cc.epoch,
                        at: Instant::now(),
                    })
                }
                Err(Failure::Refused(e)) => {
                    return Err(map(e, SEND, &send.destination.to_string()))
                }
                Err(Failure::Lost(lost)) => {
                    self.discard(cc.epoch);
                    if deadline.passed() {
                        return Err(self.connection.gave_up(SEND, &lost));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Wait for the broker's verdict, re-publishing after a lost connection or a confirm that
    /// did not come, until the reconnect timeout has passed without an answer from the broker.
    async fn await_confirm(
        &self,
        send: Send,
        mut verdict: Verdict,
        mut live: Arc<Link>,
        mut epoch: u64,
    ) -> Result<Receipt> {
        let context = |e: Error| e.with_backend(BACKEND).with_operation(SEND);
        let mut full_backoff = Duration::from_millis(20);
        let mut channel_errors = 0;
        let mut deadline = self.connection.deadline();
        loop {
            let lost = match verdict {
                Verdict::Answer(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                    return Ok(Receipt::new(send.message.id().clone()))
                }
                Verdict::Answer(Ok(Confirmation::Ack(Some(returned)))) => {
                    return Err(
                        context(returned_error(&send, &returned)).with_undelivered(send.message)
                    )
                }
                Verdict::Answer(Ok(Confirmation::Nack(_))) => match self.refused(&send) {
                    Some(e) => return Err(context(e).with_undelivered(send.message)),
                    None => {
                        // The broker answered: the budget for reaching it starts again. Offering
                        // again until there is room is the `Backpressure` policy itself.
                        deadline = self.connection.deadline();
                        tokio::time::sleep(full_backoff).await;
                        full_backoff = (full_backoff * 2).min(FULL_QUEUE_RETRY_MAX);
                        None
                    }
                },
                Verdict::Answer(Err(e)) if is_connection_loss(&e) => {
                    tracing::debug!(error = %e, id = %send.message.id(), "re-publishing after a lost connection");
                    self.connection.forget(&live);
                    self.discard(epoch);
                    Some(Lost {
                        why: format!("the connection broke before the confirm: {e}"),
                        silent: false,
                    })
                }
                Verdict::Answer(Err(e))
                    if e.is_amqp_soft_error() && channel_errors < CHANNEL_ERROR_RETRIES =>
                {
                    // Another publish on the channel (e.g. to an exchange deleted since) closed
                    // it; this message was not at fault unless its own exchange is gone.
                    channel_errors += 1;
                    if let Destination::Exchange { name, .. } = &send.destination {
                        self.lock_exchanges().remove(name.as_ref());
                        if let Err(e) = self.check_exchange(name).await {
                            return Err(e.with_undelivered(send.message));
                        }
                    }
                    None
                }
                Verdict::Answer(Err(e)) => {
                    return Err(
                        map(e, SEND, &send.destination.to_string()).with_undelivered(send.message)
                    )
                }
                Verdict::Silent(lost) => {
                    tracing::debug!(%lost, id = %send.message.id(), "re-publishing on a new channel");
                    self.discard(epoch);
                    Some(lost)
                }
            };
            if let Some(lost) = lost {
                if deadline.passed() {
                    return Err(self
                        .connection
                        .gave_up(SEND, &lost)
                        .with_undelivered(send.message));
                }
            }
            let published = match self.publish(&send, deadline).await {
                Ok(p) => p,
                Err(e) => return Err(e.with_undelivered(send.message)),
            };
            (verdict, live, epoch) =
                await_verdict(published, self.connection.config.connect_timeout()).await;
        }
    }

    /// The sender to this producer's confirm driver, started on first use.
    fn driver(&self) -> &mpsc::UnboundedSender<Job> {
        self.driver.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let wait = self.connection.config.connect_timeout();
            tokio::spawn(drive(self.me.clone(), wait, rx));
            tx
        })
    }

    /// The error for a broker nack, or `None` when the message should be offered again (a
    /// full queue declared with `Overflow::Backpressure`).
    fn refused(&self, send: &Send) -> Option<Error> {
        if let Destination::Queue(q) = &send.destination {
            if send.stamp.delayed {
                return Some(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "the broker refused the delayed message for {}",
                        send.destination
                    ),
                ));
            }
            match self.connection.queue_settings(q).max_length {
                Some((_, Overflow::Backpressure)) => return None,
                Some((max, Overflow::Reject)) => {
                    return Some(Error::new(
                        ErrorKind::QueueFull,
                        format!("queue '{q}' is full ({max} messages, overflow=reject)"),
                    ))
                }
                None => {}
            }
        }
        Some(Error::new(
            ErrorKind::Rejected,
            format!(
                "the broker refused the message for {} (negative confirm; most often a queue \
                 bounded with x-overflow=reject-publish is full)",
                send.destination
            ),
        ))
    }
}

fn returned_error(send: &Send, returned: &BasicReturnMessage) -> Error {
    match &send.destination {
        Destination::Queue(q) => Error::not_found(format!(
            "queue '{q}' does not exist: the broker returned the message ({} {}; mandatory is on)",
            returned.reply_code, returned.reply_text
        )),
        Destination::Exchange { .. } => Error::new(
            ErrorKind::Unroutable,
            format!(
                "no queue is bound to {} for this message: the broker returned it ({} {}; \
                 mandatory is on)",
                send.destination, returned.reply_code, returned.reply_text
            ),
        ),
    }
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        self.enqueue_stamped(destination, message, 1).await
    }

    async fn flush(&self) -> Result<()> {
        // Holding every permit at once means no send is between enqueue and its confirm.
        let all = self
            .inner
            .window
            .acquire_many(self.inner.window_size)
            .await
            .map_err(|_| Error::closed("producer is closed").with_backend(BACKEND))?;
        drop(all);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        // Bounded: every send in the window ends within its own bounds (a confirm within the
        // connect timeout of its publish, re-publishing within the reconnect timeout).
        self.flush().await?;
        if let Some(cc) = self.inner.channel.lock().await.take() {
            if cc.channel.status().connected() {
                let wait = self.inner.connection.config.connect_timeout();
                close_within(wait, "channel", cc.channel.close(200, "OK".into())).await;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for RabbitProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitProducer")
            .field("window", &self.inner.window_size)
            .field(
                "in_flight",
                &(self.inner.window_size as usize - self.inner.window.available_permits()),
            )
            .finish()
    }
}

/// Rebuild a message with a delay (for a delayed requeue).
pub(crate) fn with_delay(message: Message, delay: Duration) -> Message {
    let parts: MessageParts = message.into_parts();
    Message::from_parts(MessageParts {
        delay: Some(delay),
        ..parts
    })
}
