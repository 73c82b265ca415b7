//! Settling an in-memory delivery: ack forgets it, nack puts it back at the front (or after a
//! delay) or moves it to the dead-letter queue, and a dropped delivery is put back at once.
//! The broker does it all in place: nothing is republished.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::{DeliveryInfo, Message, Nack, Result, Settle};

use crate::broker::Broker;
use crate::codec::Entry;
use crate::queue::Queue;

/// What a consumer's settle handles settle against: its broker and its queue, shared by
/// every delivery of one consumer.
///
/// One reference per delivery instead of one to each: and the count it moves is the
/// consumer's own, where a count in the queue's (or broker's) allocation shares a cache line
/// with what the producer reads per send, so every delivery and ack cost the producer a miss.
pub(crate) struct SettleTarget {
    pub broker: Arc<Broker>,
    pub queue: Arc<Queue>,
}

/// Settles one in-memory delivery against the queue it came from.
///
/// It keeps its entry in place until it is dropped, with a flag for whether it was settled:
/// a delivery is built from the entry already in this handle's box, and an ack only sets the
/// flag. A nack or an abandon, the rare ways, move the entry back out.
///
/// The box is allocated before the queue's lock is taken ([`spare`](Self::spare)) and the
/// entry moved into it under the lock ([`fill`](Self::fill)): the allocation stays out of the
/// critical section the producer waits on, and a look that finds nothing keeps the box for
/// the next one.
pub(crate) struct MemorySettle {
    target: Arc<SettleTarget>,
    /// `None` in a spare handle not filled yet, and once the entry was put back.
    entry: Option<Entry>,
    settled: bool,
}

impl MemorySettle {
    /// A handle with no delivery in it yet: settled, so dropping it unfilled puts nothing back.
    pub fn spare(target: Arc<SettleTarget>) -> Self {
        MemorySettle {
            target,
            entry: None,
            settled: true,
        }
    }

    /// Take in the delivery's entry (under the queue's lock): the handle now settles it.
    #[inline(always)]
    pub fn fill(&mut self, entry: Entry) {
        self.entry = Some(entry);
        self.settled = false;
    }

    /// The message a consumer receives from `queue`, and its delivery facts (see
    /// [`Entry::received`]); `None` for a handle that was never filled.
    #[inline]
    pub fn received(&self, queue: &Arc<str>) -> Option<(Message, DeliveryInfo)> {
        self.entry.as_ref().map(|entry| entry.received(queue))
    }

    /// Settle it: the entry to put back or dead-letter, or `None` if it was settled already.
    fn take(&mut self) -> Option<Entry> {
        if self.settled {
            return None;
        }
        self.settled = true;
        self.target.queue.settled();
        // Moved out, not copied: the handle is spent.
        self.entry.take()
    }

    fn requeue(&mut self, delay: Option<std::time::Duration>) {
        let Some(entry) = self.take() else { return };
        match self.target.queue.spec.max_delivery_attempts {
            Some(max) if entry.deliveries >= max => {
                let reason = format!("max delivery attempts ({max}) reached");
                self.target
                    .broker
                    .dead_letter(&self.target.queue, entry, &reason);
            }
            // Redeliveries go to the front so the queue's order is kept as far as it can be.
            _ => self.target.queue.push_unbounded(entry, delay, true),
        }
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        // The same as an immediate ack; kept for callers that await `ack` itself.
        let _ = self.try_ack();
        Ok(())
    }

    async fn nack(mut self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay } => self.requeue(delay),
            Nack::DeadLetter { reason } => {
                if let Some(entry) = self.take() {
                    self.target
                        .broker
                        .dead_letter(&self.target.queue, entry, &reason);
                }
            }
        }
        Ok(())
    }

    fn abandon(self: Box<Self>) {
        // Dropping an unsettled settle requeues its message (see `Drop`).
        drop(self);
    }

    /// An ack waits for nothing here: done at once, without a boxed future.
    fn try_ack(&mut self) -> Option<Result<()>> {
        if !self.settled {
            self.settled = true;
            self.target.queue.settled();
        }
        Some(Ok(()))
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        // ack and nack mark it settled; one not settled was abandoned (or its settle future
        // was dropped midway) and goes back to the queue.
        if !self.settled && !self.target.queue.is_deleted() {
            self.requeue(None);
        }
    }
}
