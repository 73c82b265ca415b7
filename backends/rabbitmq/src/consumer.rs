//! Consuming with manual acks and a prefetch window, and settling what was received.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use mailroom_core::consumer::closed_consumer;
use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::topology::validate_name;
use mailroom_core::{
    Capability, Consumer, ConsumerOptions, Delivery, DeliveryInfo, Destination, Error, ErrorKind,
    Message, Nack, Producer, Result, Settle,
};
use tokio::task::JoinHandle;

use crate::backend::{close_within, Failure, QueueFacts, Shared};
use crate::codec;
use crate::error::{is_connection_loss, map};
use crate::producer::{with_delay, RabbitProducer};
use crate::BACKEND;

/// A consumer on one RabbitMQ queue (its own channel, `basic.qos` prefetch, manual acks).
///
/// After a lost connection the next `receive` reconnects and consumes again; deliveries that
/// were unacked on the old channel come back from the broker marked redelivered. Consuming
/// again runs in a task of its own, so a `receive` that is cancelled (`receive_timeout`) does
/// not cancel it: the next `receive` picks it up where it was, and it ends, consuming or with
/// an error, within the reconnect timeout.
pub struct RabbitConsumer {
    shared: Arc<Shared>,
    queue: String,
    prefetch: u16,
    facts: QueueFacts,
    state: Option<Live>,
    /// Consuming again after a lost connection, while it is under way.
    restart: Option<JoinHandle<Result<Live>>>,
    closed: bool,
    /// Publishes client-side requeues and dead letters; opened on first use.
    side: Arc<OnceLock<RabbitProducer>>,
}

struct Live {
    conn: Arc<crate::backend::Live>,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl RabbitConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<Self> {
        let ctx = |e: Error| e.with_backend(BACKEND).with_operation("consume");
        shared.check_open("consume")?;
        if options.replay.is_some() {
            shared
                .capabilities
                .require(Capability::Replay, BACKEND, "consume")?;
        }
        validate_name("queue", queue).map_err(ctx)?;
        let prefetch = match options.prefetch {
            None => shared.config.prefetch,
            Some(0) => {
                return Err(ctx(Error::invalid_input(
                    "prefetch must be at least 1 (0 would mean unbounded)",
                )))
            }
            Some(n) => u16::try_from(n).map_err(|_| {
                ctx(Error::invalid_input(format!(
                    "prefetch {n} exceeds AMQP's maximum of {}",
                    u16::MAX
                )))
            })?,
        };
        let facts = shared.queue_facts(queue);
        let mut consumer = RabbitConsumer {
            shared,
            queue: queue.to_owned(),
            prefetch,
            facts,
            state: None,
            restart: None,
            closed: false,
            side: Arc::new(OnceLock::new()),
        };
        // Start at once so a missing queue is reported here, not on the first receive.
        let live = start(consumer.shared.clone(), consumer.queue.clone(), prefetch).await?;
        consumer.state = Some(live);
        Ok(consumer)
    }

    fn delivery(&self, d: lapin::message::Delivery, conn: Arc<crate::backend::Live>) -> Delivery {
        let lapin::message::Delivery {
            redelivered,
            properties,
            data,
            acker,
            ..
        } = d;
        let (message, received) = codec::decode(&properties, data);
        let base = received.attempt.unwrap_or(1).max(1);
        let attempt = match received.delivery_count {
            Some(count) => base.saturating_add(count),
            None => base.saturating_add(u32::from(redelivered)),
        };
        let info = DeliveryInfo {
            attempt,
            redelivered: redelivered || attempt > 1,
            ..DeliveryInfo::new(self.queue.clone())
        };
        let settle = RabbitSettle {
            acker: Some(acker),
            conn,
            shared: self.shared.clone(),
            side: self.side.clone(),
            queue: self.queue.clone(),
            facts: self.facts.clone(),
            message: message.clone(),
            attempt,
        };
        Delivery::new(message, info, Box::new(settle))
    }
}

/// Open a channel, set the prefetch and start consuming, across reconnects, each step bounded
/// (see `Shared::answer`), the whole within the reconnect timeout.
async fn start(shared: Arc<Shared>, queue: String, prefetch: u16) -> Result<Live> {
    let what = format!("queue '{queue}'");
    let deadline = shared.deadline();
    loop {
        let (conn, channel) = shared
            .channel(deadline)
            .await
            .map_err(|e| e.with_operation("consume"))?;
        let qos = channel.basic_qos(prefetch, BasicQosOptions::default());
        let consumed = match shared.answer(&conn, deadline, "basic.qos", qos).await {
            Ok(()) => {
                let consume = channel.basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                );
                shared
                    .answer(&conn, deadline, "basic.consume", consume)
                    .await
            }
            Err(failure) => Err(failure),
        };
        match consumed {
            Ok(consumer) => {
                return Ok(Live {
                    conn,
                    channel,
                    consumer,
                })
            }
            Err(Failure::Refused(e)) => return Err(map(e, "consume", &what)),
            Err(Failure::Lost(lost)) if deadline.passed() => {
                return Err(shared.gave_up("consume", &lost))
            }
            Err(Failure::Lost(lost)) => {
                tracing::debug!(%lost, queue = %queue, "could not consume; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            if self.closed || self.shared.is_closed() {
                return Err(closed_consumer(BACKEND));
            }
            if self.state.is_none() {
                let restart = self.restart.get_or_insert_with(|| {
                    let (shared, queue) = (self.shared.clone(), self.queue.clone());
                    tokio::spawn(start(shared, queue, self.prefetch))
                });
                // Awaiting the handle, not the task: a cancelled receive leaves it running.
                let started = restart.await;
                self.restart = None;
                match started {
                    Ok(Ok(live)) => self.state = Some(live),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => {
                        return Err(Error::new(
                            ErrorKind::Broker,
                            format!("consuming again after a lost connection failed: {e}"),
                        )
                        .with_backend(BACKEND)
                        .with_operation("receive"))
                    }
                }
            }
            let Some(live) = self.state.as_mut() else {
                continue;
            };
            // `next` takes a delivery only when it is ready, so dropping this future loses
            // nothing: receive is cancel-safe. A connection the backend gave up (it went
            // silent) ends the wait too: lapin reports broken connections, not silent ones.
            let conn = live.conn.clone();
            let next = tokio::select! {
                biased;
                next = live.consumer.next() => next,
                () = live.conn.retired() => {
                    tracing::debug!(queue = %self.queue, "the consumer's connection was given up; resuming");
                    self.state = None;
                    continue;
                }
            };
            match next {
                Some(Ok(d)) => return Ok(self.delivery(d, conn)),
                Some(Err(e)) if is_connection_loss(&e) => {
                    tracing::debug!(error = %e, queue = %self.queue, "consumer lost its connection; resuming");
                    if let Some(live) = self.state.take() {
                        self.shared.forget(&live.conn);
                    }
                }
                Some(Err(e)) => {
                    self.state = None;
                    return Err(map(e, "receive", &format!("queue '{}'", self.queue)));
                }
                None => {
                    // Cancelled by the broker (queue deleted) or the channel closed: consuming
                    // again either resumes or reports why not (e.g. NotFound).
                    if let Some(live) = self.state.take() {
                        self.shared.forget(&live.conn);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        if let Some(restart) = self.restart.take() {
            restart.abort();
        }
        if let Some(live) = self.state.take() {
            drop(live.consumer);
            if live.channel.status().connected() {
                // Closing the channel hands every unacked delivery back to the queue.
                let wait = self.shared.config.connect_timeout();
                close_within(wait, "channel", live.channel.close(200, "OK".into())).await;
            }
        }
        if let Some(side) = self.side.get() {
            side.close().await?;
        }
        Ok(())
    }
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        // Dropping the lapin channel and consumer closes the channel in the background, and the
        // broker requeues what was unacked.
        self.state.take();
        if let Some(restart) = self.restart.take() {
            restart.abort();
        }
    }
}

/// Settles one delivery on the channel it came from.
struct RabbitSettle {
    acker: Option<Acker>,
    /// The connection the delivery came on: once the backend gives it up, the channel is gone.
    conn: Arc<crate::backend::Live>,
    shared: Arc<Shared>,
    side: Arc<OnceLock<RabbitProducer>>,
    queue: String,
    facts: QueueFacts,
    message: Message,
    attempt: u32,
}

fn channel_gone(operation: &'static str) -> Error {
    Error::new(
        ErrorKind::Closed,
        "the delivery's channel is closed (consumer closed or connection lost); the broker \
         redelivers the message",
    )
    .with_backend(BACKEND)
    .with_operation(operation)
}

impl RabbitSettle {
    fn side(&self) -> &RabbitProducer {
        self.side
            .get_or_init(|| RabbitProducer::new(self.shared.clone()))
    }

    async fn ack_now(&mut self, operation: &'static str) -> Result<()> {
        let Some(acker) = self.acker.take() else {
            return Err(channel_gone(operation));
        };
        let ack = acker.ack(BasicAckOptions::default());
        self.settled(operation, ack).await
    }

    /// The outcome of an ack or nack, waiting at most the connect timeout for lapin to hand it
    /// to the broker (there is no reply to wait for), and no longer than the connection is in
    /// use.
    ///
    /// Why: an ack made as the connection was breaking in a broker restart could wait in lapin
    /// for ever (the consumer of the restart fault test hung there: issue 20), and a silent
    /// connection never takes it.
    async fn settled(
        &self,
        operation: &'static str,
        settle: impl std::future::Future<Output = lapin::Result<bool>>,
    ) -> Result<()> {
        let wait = self.shared.config.connect_timeout();
        let settled = tokio::select! {
            biased;
            settled = tokio::time::timeout(wait, settle) => settled,
            () = self.conn.retired() => return Err(channel_gone(operation)),
        };
        match settled {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(channel_gone(operation)),
            Ok(Err(e)) if is_connection_loss(&e) => Err(channel_gone(operation).with_source(e)),
            Ok(Err(e)) => Err(map(e, operation, &format!("queue '{}'", self.queue))),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the {operation} was not handed to RabbitMQ within {wait:?}; if it never \
                     arrives, the broker redelivers the message"
                ),
            )
            .with_backend(BACKEND)
            .with_operation(operation)),
        }
    }

    async fn nack_now(&mut self, requeue: bool, operation: &'static str) -> Result<()> {
        let Some(acker) = self.acker.take() else {
            return Err(channel_gone(operation));
        };
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        let nack = acker.nack(options);
        self.settled(operation, nack).await
    }

    /// Publish `message` to `destination` and, once the broker confirmed it, ack the original.
    /// If the publish fails the original is requeued by the broker instead, so nothing is lost.
    async fn republish(
        &mut self,
        destination: Destination,
        message: Message,
        attempt: u32,
    ) -> Result<()> {
        let sent = async {
            self.side()
                .enqueue_stamped(&destination, message, attempt)
                .await?
                .await
        }
        .await;
        match sent {
            Ok(_) => self.ack_now("nack").await,
            Err(e) => {
                let _ = self.nack_now(true, "nack").await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.ack_now("ack").await
    }

    async fn nack(mut self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay: Some(delay) } if !delay.is_zero() => {
                self.shared
                    .capabilities
                    .require(Capability::DelayedDelivery, BACKEND, "nack")?;
                let message = with_delay(self.message.clone(), delay);
                let next = self.attempt.saturating_add(1);
                self.republish(Destination::queue(&self.queue), message, next)
                    .await
            }
            Nack::Requeue { .. } if self.facts.quorum => {
                // The quorum queue counts the return in x-delivery-count and enforces its
                // delivery limit.
                self.nack_now(true, "nack").await
            }
            Nack::Requeue { .. } => {
                // Classic queues keep no count: the message goes back as a copy that carries
                // its attempt number, and the original is acked once the copy is confirmed.
                let next = self.attempt.saturating_add(1);
                let message = self.message.clone();
                self.republish(Destination::queue(&self.queue), message, next)
                    .await
            }
            Nack::DeadLetter { reason } => match self.facts.dead_letter_queue.clone() {
                Some(dlq) => {
                    let mut message = self.message.clone();
                    stamp_dead_letter(&mut message, &self.queue, &reason, self.attempt);
                    self.republish(Destination::queue(dlq), message, 1).await
                }
                // Not declared through this backend: let the broker dead-letter it through the
                // queue's own x-dead-letter-exchange (the reason cannot travel that way).
                None => self.nack_now(false, "nack").await,
            },
        }
    }

    fn abandon(mut self: Box<Self>) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        // The broker would requeue it anyway when the channel closes; a nack returns it now.
        let wait = self.shared.config.connect_timeout();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let nack = acker.nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                });
                let _ = tokio::time::timeout(wait, nack).await;
            });
        }
    }
}
