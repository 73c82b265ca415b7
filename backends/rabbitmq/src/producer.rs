//! Publishing with publisher confirms: a bounded window of unconfirmed messages, re-sent after a
//! reconnect until the broker confirms them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, PublisherConfirm};
use mailroom_core::topology::validate_name;
use mailroom_core::{
    Destination, Error, ErrorKind, Message, MessageParts, Overflow, PendingConfirm, Producer,
    Receipt, Result,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::backend::{close_within, Shared};
use crate::codec::{self, Stamp};
use crate::error::{is_connection_loss, map};
use crate::BACKEND;

/// How often a delay queue is re-declared while in use, so its `x-expires` never runs out.
const DELAY_QUEUE_REFRESH: Duration = Duration::from_secs(60);
/// How often a message refused by a full `Backpressure` queue is offered again, at most.
const FULL_QUEUE_RETRY_MAX: Duration = Duration::from_millis(500);
/// How many times a send is re-published after its channel was closed by a channel error.
const CHANNEL_ERROR_RETRIES: u32 = 3;

/// A producer on RabbitMQ.
///
/// Publisher confirms are always on. `enqueue` waits for room in the window of unconfirmed
/// messages (`confirm_window`), publishes, and returns a pending confirm that resolves on the
/// broker's ack. A broker nack is `QueueFull` (a bounded queue refused it) or `Rejected`; a
/// mandatory message no queue took is `NotFound` (queue destination) or `Unroutable` (exchange).
/// When the connection breaks, unconfirmed messages are re-published on the new connection
/// (so a message can arrive twice, never zero times) until `reconnect_timeout_ms` runs out.
/// Every failure hands the message back in the error.
pub struct RabbitProducer {
    inner: Arc<Inner>,
}

/// A published message whose confirm the driver awaits.
struct Job {
    send: Send,
    confirm: PublisherConfirm,
    /// Its place in the window, released once the outcome is known.
    permit: OwnedSemaphorePermit,
    tx: oneshot::Sender<Result<Receipt>>,
}

/// Awaits confirms in publish order (the order the broker sends them), so a window of
/// unconfirmed messages costs one task and one wake-up per confirm instead of a task each.
/// Anything but a plain ack (a lost connection to re-publish across, a refusal to explain) moves
/// to a task of its own so the rest of the window is not held up.
///
/// The queue is unbounded in type only: every job holds a permit of the producer's window.
async fn drive(inner: Weak<Inner>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        let Job {
            send,
            confirm,
            permit,
            tx,
        } = job;
        match confirm.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                drop(permit);
                let _ = tx.send(Ok(Receipt::new(send.message.id().clone())));
            }
            outcome => match inner.upgrade() {
                Some(inner) => {
                    tokio::spawn(async move {
                        let result = inner.await_confirm(send, outcome).await;
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
                    .with_operation("send")
                    .with_undelivered(send.message)));
                }
            },
        }
    }
}

struct Inner {
    me: Weak<Inner>,
    driver: OnceLock<mpsc::UnboundedSender<Job>>,
    shared: Arc<Shared>,
    channel: tokio::sync::Mutex<Option<Channel>>,
    window: Arc<Semaphore>,
    window_size: u32,
    closed: AtomicBool,
    known_exchanges: Mutex<HashSet<String>>,
    delay_queues: Mutex<HashMap<String, Instant>>,
}

impl RabbitProducer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let window_size = shared.config.confirm_window.min(1_000_000) as u32;
        RabbitProducer {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                driver: OnceLock::new(),
                window: Arc::new(Semaphore::new(window_size as usize)),
                window_size,
                shared,
                channel: tokio::sync::Mutex::new(None),
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
        let ctx = |e: Error| e.with_backend(BACKEND).with_operation("send");
        if inner.closed.load(Ordering::Acquire) {
            return Err(ctx(Error::closed("producer is closed")).with_undelivered(message));
        }
        if let Err(e) = inner.shared.check_open("send") {
            return Err(e.with_undelivered(message));
        }
        if let Err(e) = validate_name("destination", destination.name()) {
            return Err(ctx(e).with_undelivered(message));
        }
        if let Err(e) = inner
            .shared
            .capabilities
            .check_message(&message, BACKEND, "send")
        {
            return Err(e.with_undelivered(message));
        }
        let permit = match inner.window.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => {
                return Err(ctx(Error::closed("producer is closed")).with_undelivered(message))
            }
        };
        let send = Send::new(
            destination.clone(),
            message,
            attempt,
            inner.shared.config.persistent,
        );
        let send = match inner.prepare(send).await {
            Ok(send) => send,
            Err((e, message)) => return Err(e.with_undelivered(message)),
        };
        let confirm = match inner.publish(&send).await {
            Ok(c) => c,
            Err(e) => return Err(e.with_undelivered(send.message)),
        };
        let (tx, rx) = oneshot::channel();
        let job = Job {
            send,
            confirm,
            permit,
            tx,
        };
        if let Err(mpsc::error::SendError(job)) = inner.driver().send(job) {
            // The driver only stops when the producer is gone; this producer is not.
            return Err(ctx(Error::closed("producer is closed")).with_undelivered(job.send.message));
        }
        Ok(PendingConfirm::waiting(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Broker,
                    "the confirm task ended without a result (runtime shutting down?)",
                )
                .with_backend(BACKEND)
                .with_operation("send"))
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
        self.shared
            .with_channel("send", &what, |ch| async move {
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
            .shared
            .with_channel("send", &what, |ch| async move {
                crate::topology::declare_delay_queue(&ch, destination, delay).await
            })
            .await?;
        self.lock_delays().insert(name.clone(), Instant::now());
        Ok(name)
    }

    /// The producer's confirm channel, reopened (and the connection with it) when it broke.
    async fn channel(&self) -> Result<Channel> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref() {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *slot = None;
        let (_, ch) = self.shared.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| map(e, "confirm_select", "the producer channel"))?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// Publish once the connection allows, retrying across reconnects until the deadline.
    async fn publish(&self, send: &Send) -> Result<PublisherConfirm> {
        let deadline = Instant::now() + self.shared.config.reconnect_timeout();
        loop {
            let ch = self.channel().await?;
            let result = ch
                .basic_publish(
                    send.exchange.clone(),
                    send.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: self.shared.config.mandatory,
                        immediate: false,
                    },
                    send.message.payload(),
                    codec::properties(&send.message, send.stamp),
                )
                .await;
            match result {
                Ok(confirm) => return Ok(confirm),
                Err(e) if is_connection_loss(&e) && Instant::now() < deadline => {
                    self.shared.forget_broken();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(map(e, "send", &send.destination.to_string())),
            }
        }
    }

    /// Wait for the broker's verdict, re-publishing after a lost connection.
    async fn await_confirm(
        &self,
        send: Send,
        mut outcome: lapin::Result<Confirmation>,
    ) -> Result<Receipt> {
        let ctx = |e: Error| e.with_backend(BACKEND).with_operation("send");
        let mut full_backoff = Duration::from_millis(20);
        let mut channel_errors = 0;
        loop {
            match outcome {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                    return Ok(Receipt::new(send.message.id().clone()))
                }
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(ctx(returned_error(&send, &returned)).with_undelivered(send.message))
                }
                Ok(Confirmation::Nack(_)) => match self.refused(&send) {
                    Some(e) => return Err(ctx(e).with_undelivered(send.message)),
                    None => {
                        tokio::time::sleep(full_backoff).await;
                        full_backoff = (full_backoff * 2).min(FULL_QUEUE_RETRY_MAX);
                    }
                },
                Err(e) if is_connection_loss(&e) => {
                    tracing::debug!(error = %e, id = %send.message.id(), "re-publishing after a lost connection");
                    self.shared.forget_broken();
                }
                Err(e) if e.is_amqp_soft_error() && channel_errors < CHANNEL_ERROR_RETRIES => {
                    // Another publish on the channel (e.g. to an exchange deleted since) closed
                    // it; this message was not at fault unless its own exchange is gone.
                    channel_errors += 1;
                    if let Destination::Exchange { name, .. } = &send.destination {
                        self.lock_exchanges().remove(name.as_ref());
                        if let Err(e) = self.check_exchange(name).await {
                            return Err(e.with_undelivered(send.message));
                        }
                    }
                }
                Err(e) => {
                    return Err(map(e, "send", &send.destination.to_string())
                        .with_undelivered(send.message))
                }
            }
            outcome = match self.publish(&send).await {
                Ok(c) => c.await,
                Err(e) => return Err(e.with_undelivered(send.message)),
            };
        }
    }

    /// The sender to this producer's confirm driver, started on first use.
    fn driver(&self) -> &mpsc::UnboundedSender<Job> {
        self.driver.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(drive(self.me.clone(), rx));
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
            match self.shared.queue_facts(q).max_length {
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
        self.flush().await?;
        if let Some(ch) = self.inner.channel.lock().await.take() {
            if ch.status().connected() {
                let wait = self.inner.shared.config.connect_timeout();
                close_within(wait, "channel", ch.close(200, "OK".into())).await;
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
