//! Settling a Kafka delivery. Kafka itself only moves a partition's commit position, so:
//!
//! * **ack** marks the offset settled in the [`OffsetBook`]; the consumer stores the
//!   contiguous settled prefix and librdkafka commits it.
//! * **nack requeue** (and a dropped delivery) publishes a copy to the queue's topic with
//!   attempt + 1 and settles the original once the copy is confirmed (core's
//!   [`republish`](mailroom_core::republish)); the copy goes behind messages sent meanwhile.
//! * **nack dead-letter** (or a requeue past `max_delivery_attempts`) publishes a stamped copy to
//!   the dead-letter topic, then settles the original; without one the message is discarded.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::operation::NACK;
use mailroom_core::republish::{self, republish, Republish};
use mailroom_core::{Capability, Message, Nack, Result, Settle};

use crate::offsets::{Mark, OffsetBook};
use crate::producer::{Completion, ProducerCore};
use crate::topology::QueueSettings;
use crate::BACKEND;

/// What every delivery of one consumer settles against.
pub(crate) struct SettleScope {
    pub book: Arc<OffsetBook>,
    pub producer: Arc<ProducerCore>,
    pub queue: Arc<str>,
    pub settings: QueueSettings,
}

/// Settles one delivery: commit position, requeue copy or dead letter.
pub(crate) struct KafkaSettle {
    pub scope: Arc<SettleScope>,
    pub mark: Mark,
    pub offset: i64,
    pub message: Message,
    pub attempt: u32,
}

impl KafkaSettle {
    fn settle(&self) {
        self.scope.book.settle(self.mark, self.offset);
    }

    async fn requeue(&mut self) -> Result<()> {
        if !self.scope.book.is_current(self.mark) {
            // The partition moved on; its new owner delivers the message again.
            return Ok(());
        }
        let queue = self.scope.queue.clone();
        let message = self.message.clone();
        let next = self.attempt + 1;
        republish(self, &queue, message, Some(next)).await
    }

    async fn dead_letter(&mut self, reason: &str) -> Result<()> {
        let scope = self.scope.clone();
        let message = self.message.clone();
        let dead_letter_queue = scope.settings.dead_letter_queue.as_deref();
        let attempt = self.attempt;
        republish::dead_letter(
            self,
            dead_letter_queue,
            &message,
            &scope.queue,
            reason,
            attempt,
        )
        .await
    }
}

impl Republish for KafkaSettle {
    async fn publish_copy(
        &mut self,
        topic: &str,
        message: Message,
        attempt: Option<u32>,
    ) -> Result<()> {
        let producer = &self.scope.producer;
        // A dead-letter topic may not be known to this producer yet; the lookup is cached.
        producer.ensure_topic(topic).await?;
        // Counted, so that closing the consumer waits for the copy before it commits.
        self.scope.book.requeue_started();
        let sent = producer.send_confirmed(topic, message, attempt).await;
        self.scope.book.requeue_finished();
        sent.map(|_| ())
    }

    async fn settle_original(&mut self) -> Result<()> {
        self.settle();
        Ok(())
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.settle();
        Ok(())
    }

    /// An ack is a mark in the offset book, done at once: no boxed future per message.
    fn try_ack(&mut self) -> Option<Result<()>> {
        self.settle();
        Some(Ok(()))
    }

    async fn nack(mut self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay: Some(_) } => {
                // Kept under the capability layer's check: a bare backend would otherwise
                // redeliver at once and drop the delay without a word.
                let refused = self.scope.producer.capabilities().require(
                    Capability::DelayedDelivery,
                    BACKEND,
                    NACK,
                );
                // Like a dropped delivery, the message comes back at once.
                self.abandon();
                refused
            }
            Nack::Requeue { delay: None } => match self.scope.settings.max_delivery_attempts {
                Some(max) if self.attempt >= max => {
                    let reason = format!(
                        "rejected on attempt {}; the queue allows {max} delivery attempts",
                        self.attempt
                    );
                    self.dead_letter(&reason).await
                }
                _ => self.requeue().await,
            },
            Nack::DeadLetter { reason } => self.dead_letter(&reason).await,
        }
    }

    fn abandon(self: Box<Self>) {
        let KafkaSettle {
            scope,
            mark,
            offset,
            message,
            attempt,
        } = *self;
        if !scope.book.is_current(mark) {
            return;
        }
        scope.book.requeue_started();
        // Only the book: a callback holding the producer could drop its last handle on the
        // producer's own polling thread, which cannot join itself.
        let done = scope.book.clone();
        let sent = scope.producer.send_detached(
            &scope.queue,
            message,
            Some(attempt + 1),
            Completion::Callback(Box::new(move |result| {
                match result {
                    Ok(_) => {
                        done.settle(mark, offset);
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "requeue of a dropped delivery failed; it is redelivered after a restart"
                    ),
                }
                done.requeue_finished();
            })),
        );
        if !sent {
            scope.book.requeue_finished();
            tracing::warn!(
                "requeue of a dropped delivery refused; it is redelivered after a restart"
            );
        }
    }
}
