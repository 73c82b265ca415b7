//! A message as the in-memory broker holds it, and back: nothing is serialised, so the
//! "wire" form is an [`Entry`], the message with the broker's own bookkeeping.
//!
//! A send moves the message into an entry (no copy); a receive hands out a clone (the
//! payload's bytes are shared, not copied) while the entry stays with the settle handle until
//! it is acked or put back; a dead letter is the same message stamped with the shared
//! `x-mailroom-dead-letter-*` headers. No internal header is added: attempts and enqueue times
//! live in the entry, not in the message.

use std::sync::Arc;

use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::{DeliveryInfo, Message};
use tokio::time::Instant;

/// A message waiting in a queue, with how many times it has been delivered.
pub(crate) struct Entry {
    pub message: Message,
    pub deliveries: u32,
    /// Only kept for queues with a TTL: reading the clock per message is not free.
    pub enqueued_at: Option<Instant>,
}

impl Entry {
    /// A message entering a queue; `timed` when the queue expires messages.
    #[inline]
    pub fn new(message: Message, timed: bool) -> Self {
        Entry {
            message,
            deliveries: 0,
            enqueued_at: timed.then(Instant::now),
        }
    }

    /// The message a consumer receives from `queue`, and its delivery facts.
    pub fn received(&self, queue: &Arc<str>) -> (Message, DeliveryInfo) {
        let info = DeliveryInfo {
            attempt: self.deliveries,
            redelivered: self.deliveries > 1,
            ..DeliveryInfo::new(queue.clone())
        };
        (self.message.clone(), info)
    }

    /// The message as it goes to `from`'s dead-letter queue: stamped with why, from where and
    /// after how many deliveries.
    pub fn into_dead_letter(mut self, from: &str, reason: &str) -> Message {
        stamp_dead_letter(&mut self.message, from, reason, self.deliveries);
        self.message
    }
}
