//! Sending: a message's way from `enqueue` to the wire, in the order it takes. The checks and a
//! place in the confirm window (`RabbitProducer::enqueue_stamped`), where it is published to
//! (`Inner::prepare`: the exchange checked, a delay routed through its delay queue), and the
//! publish on the producer's confirm channel (`Inner::publish`, `Inner::channel`). What follows
//! the publish, awaiting the broker's confirm and re-publishing after a lost connection, is in
//! `confirm.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use mailroom_core::operation::SEND;
use mailroom_core::topology::validate_name;
use mailroom_core::{
    DeliveryGuarantee, Destination, Error, ErrorKind, Message, MessageParts, PendingConfirm,
    Producer, Receipt, Result,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::codec::{self, Stamp};
use crate::config::QueueType;
use crate::confirm::{Job, Published};
use crate::connection::{close_within, Connection, Deadline, Failure, Link, Lost};
use crate::error::map;
use crate::BACKEND;

/// How often a delay queue is re-declared while in use, so its `x-expires` never runs out.
const DELAY_QUEUE_REFRESH: Duration = Duration::from_secs(60);
/// Pause before publishing again after a lost connection or channel.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A producer on RabbitMQ.
///
/// With [`DeliveryGuarantee::Confirmed`] (the default) publisher confirms are on. `enqueue` waits for room in the window of unconfirmed
/// messages (`confirm_window`; at most `reconnect_timeout_ms`, then `Timeout`), publishes, and
/// returns a pending confirm that resolves on the broker's ack. A broker nack is `QueueFull` (a
/// bounded queue refused it) or `Rejected`; a mandatory message no queue took is `NotFound`
/// (queue destination) or `Unroutable` (exchange). When the connection breaks, or a confirm
/// does not come within `connect_timeout_ms` of its publish, the message is re-published on a
/// new channel (so it can arrive twice, never zero times) until `reconnect_timeout_ms` passes
/// without an answer from the broker. Every failure hands the message back in the error.
///
/// With [`DeliveryGuarantee::Unconfirmed`] (`?guarantee=unconfirmed`) its channel is not put in
/// confirm mode and messages are published without the mandatory flag: the pending confirm is
/// ready as soon as lapin has written the frames to the connection, and a message the broker
/// drops (no queue, a full queue, a connection lost after the write) is lost without an error.
/// A publish that fails before its frames are written still returns the message in the error.
pub struct RabbitProducer {
    inner: Arc<Inner>,
}

/// The producer's state, shared with its confirm driver (`confirm.rs`).
pub(crate) struct Inner {
    pub(crate) me: Weak<Inner>,
    pub(crate) driver: OnceLock<mpsc::UnboundedSender<Job>>,
    pub(crate) connection: Arc<Connection>,
    channel: tokio::sync::Mutex<Option<ConfirmChannel>>,
    /// The last epoch handed out to a confirm channel.
    epochs: AtomicU64,
    /// Channels of a lower epoch are not published on any more.
    trusted_from: AtomicU64,
    window: Arc<Semaphore>,
    window_size: u32,
    /// `Confirmed` or `Unconfirmed` (the backend offers no other).
    guarantee: DeliveryGuarantee,
    closed: AtomicBool,
    known_exchanges: Mutex<HashSet<String>>,
    delay_queues: Mutex<HashMap<String, Instant>>,
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

impl RabbitProducer {
    /// A producer with publisher confirms (what requeues and dead-lettering use, whatever the
    /// backend's configured guarantee).
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        Self::with_guarantee(connection, DeliveryGuarantee::Confirmed)
    }

    /// A producer with `guarantee`, which must be `Confirmed` or `Unconfirmed` (the backend
    /// checks it against its capabilities first).
    pub(crate) fn with_guarantee(
        connection: Arc<Connection>,
        guarantee: DeliveryGuarantee,
    ) -> Self {
        let window_size = connection.config.confirm_window.min(1_000_000) as u32;
        RabbitProducer {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                driver: OnceLock::new(),
                window: Arc::new(Semaphore::new(window_size as usize)),
                window_size,
                guarantee,
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
        if let Err(e) = codec::check(&message) {
            return Err(context(e).with_undelivered(message));
        }
        // The window frees up as confirms come or their bounded waits end; this wait is bounded
        // too, by the same budget a reconnect has.
        let deadline = inner.connection.deadline();
        let permit = match inner.room(deadline).await {
            Ok(p) => p,
            Err(e) => return Err(e.with_undelivered(message)),
        };
        let to_stream = inner.to_stream(destination);
        if to_stream && message.delay().is_some_and(|d| !d.is_zero()) {
            // A delay queue dead-letters into its destination, and RabbitMQ 3.10 drops what is
            // dead-lettered into a stream: refused here rather than lost there.
            return Err(context(Error::unsupported(format!(
                "'{}' is a stream, and a delayed message cannot reach a stream (RabbitMQ drops \
                 what a delay queue dead-letters into it)",
                destination.name()
            )))
            .with_undelivered(message));
        }
        let send = Send::new(
            destination.clone(),
            message,
            attempt,
            inner.connection.config.persistent,
            to_stream,
        );
        let send = match inner.prepare(send).await {
            Ok(send) => send,
            Err((e, message)) => return Err(e.with_undelivered(message)),
        };
        let published = match inner.publish(&send, deadline).await {
            Ok(p) => p,
            Err(e) => return Err(e.with_undelivered(send.message)),
        };
        if !inner.confirms() {
            // Written to the connection is all this level waits for; nobody awaits a confirm
            // the broker was not asked for, so the window place is free again at once.
            drop((published, permit));
            return Ok(PendingConfirm::ready(Ok(Receipt::new(
                send.message.id().clone(),
            ))));
        }
        inner.confirm(send, published, permit)
    }
}

/// One message on its way: where it goes and what it is published as.
pub(crate) struct Send {
    pub(crate) destination: Destination,
    pub(crate) message: Message,
    pub(crate) stamp: Stamp,
    /// (exchange, routing key) actually published to: the destination, or its delay queue.
    exchange: ShortString,
    routing_key: ShortString,
}

impl Send {
    fn new(
        destination: Destination,
        mut message: Message,
        attempt: u32,
        persistent: bool,
        to_stream: bool,
    ) -> Self {
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
                to_stream,
            },
            // Names were validated to at most 255 bytes; routing keys beyond that are refused
            // by the broker anyway.
            exchange: ShortString::try_new(exchange).unwrap_or_default(),
            routing_key: ShortString::try_new(routing_key).unwrap_or_default(),
        }
    }
}

impl Inner {
    /// Whether `destination` is (or, through an exchange on a stream backend, may be) a stream.
    fn to_stream(&self, destination: &Destination) -> bool {
        let default = self.connection.config.queue_type;
        default == QueueType::Stream
            || match destination {
                Destination::Queue(q) => self
                    .connection
                    .declared()
                    .queues
                    .get(q.as_ref())
                    .is_some_and(|spec| crate::topology::is_stream(spec, default)),
                Destination::Exchange { .. } => false,
            }
    }

    /// Whether the broker is asked to confirm each publish.
    fn confirms(&self) -> bool {
        self.guarantee == DeliveryGuarantee::Confirmed
    }

    /// A place in the confirm window, waiting at most until `deadline` for one.
    async fn room(&self, deadline: Deadline) -> Result<OwnedSemaphorePermit> {
        let context = |e: Error| e.with_backend(BACKEND).with_operation(SEND);
        // Room is usually there: take it without arming a timer.
        let permit = match self.window.clone().try_acquire_owned() {
            Ok(p) => Ok(Ok(p)),
            Err(_) => {
                let acquire = self.window.clone().acquire_owned();
                tokio::time::timeout(deadline.remaining(), acquire).await
            }
        };
        match permit {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(context(Error::closed("producer is closed"))),
            Err(_) => Err(context(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no room in the confirm window ({} unconfirmed) within {:?}",
                    self.window_size,
                    self.connection.config.reconnect_timeout()
                ),
            ))),
        }
    }

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
    pub(crate) async fn check_exchange(&self, name: &str) -> Result<()> {
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

    pub(crate) fn lock_exchanges(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
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

    /// Publish once the connection allows, retrying across reconnects until the deadline.
    pub(crate) async fn publish(&self, send: &Send, deadline: Deadline) -> Result<Published> {
        loop {
            let cc = self.channel(deadline).await?;
            // lapin resolves a publish once its frames are written: a connection that takes a
            // connect timeout to take them is as silent as one that does not answer.
            let publish = cc.channel.basic_publish(
                send.exchange.clone(),
                send.routing_key.clone(),
                BasicPublishOptions {
                    // Without confirms nobody reads a returned message, and lapin would keep
                    // every one of them: an unroutable message is dropped by the broker instead.
                    mandatory: self.connection.config.mandatory && self.confirms(),
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
            let selected = if self.confirms() {
                let select = ch.confirm_select(ConfirmSelectOptions::default());
                self.connection
                    .answer(&live, deadline, "confirm.select", select)
                    .await
            } else {
                Ok(())
            };
            match selected {
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
    pub(crate) fn discard(&self, epoch: u64) {
        self.trusted_from.fetch_max(epoch + 1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for RabbitProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitProducer")
            .field("guarantee", &self.inner.guarantee)
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
    let (parts, binary_key) = message.into_parts_and_binary_key();
    Message::from_parts_and_binary_key(
        MessageParts {
            delay: Some(delay),
            ..parts
        },
        binary_key,
    )
}
