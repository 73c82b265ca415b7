//! Settling a RabbitMQ delivery on the channel it came from: ack and nack go to the broker,
//! bounded (see [`RabbitSettle::settled`]). What the broker cannot do itself is done by
//! republishing (core's [`republish`](mailroom_core::republish)): a delayed requeue (through a
//! delay queue), a requeue on a classic queue (which keeps no attempt count) and a dead letter
//! with its reason. A quorum queue's requeue, and a dead letter on a queue this backend did not
//! declare, are plain nacks.
//!
//! A stream refuses `basic.nack` (RabbitMQ answers `NOT_IMPLEMENTED` and closes the whole
//! connection), so on a stream every settle is an ack to the broker (which only returns the
//! prefetch credit): a requeue is the copy republished to the stream, and a delivery that is
//! dropped, or whose copy could not be published, is acked to the broker without moving the
//! group's position, so the group reads it again after a restart.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;
use mailroom_core::operation::{ACK, NACK};
use mailroom_core::republish::{self, republish, Republish};
use mailroom_core::{Destination, Error, ErrorKind, Message, Nack, Result, Settle};

use crate::connection::{Connection, Link, QueueSettings};
use crate::error::{is_connection_loss, map};
use crate::producer::{with_delay, RabbitProducer};
use crate::stream::StreamAck;
use crate::BACKEND;

/// Settles one delivery on the channel it came from.
pub(crate) struct RabbitSettle {
    pub acker: Option<Acker>,
    /// The connection the delivery came on: once the backend gives it up, the channel is gone.
    pub conn: Arc<Link>,
    pub connection: Arc<Connection>,
    pub side: Arc<OnceLock<RabbitProducer>>,
    pub queue: String,
    pub settings: QueueSettings,
    pub message: Message,
    pub attempt: u32,
    /// On a stream: the cursor an ack moves.
    pub stream: Option<StreamAck>,
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
            .get_or_init(|| RabbitProducer::new(self.connection.clone()))
    }

    async fn ack_now(&mut self, operation: &'static str) -> Result<()> {
        let Some(acker) = self.acker.take() else {
            return Err(channel_gone(operation));
        };
        let ack = acker.ack(BasicAckOptions::default());
        self.settled(operation, ack).await?;
        if let Some(stream) = &self.stream {
            stream.acked().await;
        }
        Ok(())
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
        let wait = self.connection.config.connect_timeout();
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
        if self.settings.stream {
            // Only the prefetch credit comes back; the position stays before this delivery.
            let ack = acker.ack(BasicAckOptions::default());
            return self.settled(operation, ack).await;
        }
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        let nack = acker.nack(options);
        self.settled(operation, nack).await
    }
}

/// A client-side requeue or dead letter: publish the copy, and once the broker confirmed it,
/// ack the original. If the publish fails the original is requeued by the broker instead, so
/// nothing is lost.
impl Republish for RabbitSettle {
    async fn publish_copy(
        &mut self,
        queue: &str,
        message: Message,
        attempt: Option<u32>,
    ) -> Result<()> {
        let destination = Destination::queue(queue);
        let pending = self
            .side()
            .enqueue_stamped(&destination, message, attempt.unwrap_or(1))
            .await?;
        pending.await.map(|_| ())
    }

    async fn settle_original(&mut self) -> Result<()> {
        self.ack_now(NACK).await
    }

    async fn release_original(&mut self) {
        let _ = self.nack_now(true, NACK).await;
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.ack_now(ACK).await
    }

    async fn nack(mut self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay: Some(delay) } if !delay.is_zero() && self.settings.stream => {
                self.nack_now(false, NACK).await?;
                Err(Error::unsupported(format!(
                    "queue '{}' is a stream, and a delayed requeue cannot reach a stream (RabbitMQ \
                     drops what a delay queue dead-letters into it); the group's position does \
                     not move past the message, so it is read again after a restart",
                    self.queue
                ))
                .with_backend(BACKEND)
                .with_operation(NACK))
            }
            Nack::Requeue { delay: Some(delay) } if !delay.is_zero() => {
                let message = with_delay(self.message.clone(), delay);
                let next = self.attempt.saturating_add(1);
                let queue = self.queue.clone();
                republish(&mut *self, &queue, message, Some(next)).await
            }
            Nack::Requeue { .. } if self.settings.quorum => {
                // The quorum queue counts the return in x-delivery-count and enforces its
                // delivery limit.
                self.nack_now(true, NACK).await
            }
            Nack::Requeue { .. } => {
                // Classic queues keep no count: the message goes back as a copy that carries
                // its attempt number, and the original is acked once the copy is confirmed.
                let next = self.attempt.saturating_add(1);
                let message = self.message.clone();
                let queue = self.queue.clone();
                republish(&mut *self, &queue, message, Some(next)).await
            }
            Nack::DeadLetter { .. } if self.settings.stream => {
                self.nack_now(false, NACK).await?;
                Err(Error::unsupported(format!(
                    "queue '{}' is a stream, and streams do not dead-letter; the message stays \
                     in the stream and the group's position does not move past it",
                    self.queue
                ))
                .with_backend(BACKEND)
                .with_operation(NACK))
            }
            Nack::DeadLetter { reason } => match self.settings.dead_letter_queue.clone() {
                Some(dlq) => {
                    let message = self.message.clone();
                    let queue = self.queue.clone();
                    let attempt = self.attempt;
                    republish::dead_letter(
                        &mut *self,
                        Some(&dlq),
                        &message,
                        &queue,
                        &reason,
                        attempt,
                    )
                    .await
                }
                // Not declared through this backend: let the broker dead-letter it through the
                // queue's own x-dead-letter-exchange (the reason cannot travel that way).
                None => self.nack_now(false, NACK).await,
            },
        }
    }

    fn abandon(mut self: Box<Self>) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        // The broker would requeue it anyway when the channel closes; a nack returns it now.
        let wait = self.connection.config.connect_timeout();
        let stream = self.settings.stream;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if stream {
                    // A stream refuses nacks; the ack only returns the prefetch credit, and the
                    // group's position stays before this delivery.
                    let _ = tokio::time::timeout(wait, acker.ack(BasicAckOptions::default())).await;
                    return;
                }
                let nack = acker.nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                });
                let _ = tokio::time::timeout(wait, nack).await;
            });
        }
    }
}
