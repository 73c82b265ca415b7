//! Settling an in-memory delivery: ack forgets it, nack puts it back at the front (or after a
//! delay) or moves it to the dead-letter queue, and a dropped delivery is put back at once.
//! The broker does it all in place: nothing is republished.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::{Nack, Result, Settle};

use crate::broker::Broker;
use crate::codec::Entry;
use crate::queue::Queue;

/// Settles one in-memory delivery against the queue it came from.
pub(crate) struct MemorySettle {
    broker: Arc<Broker>,
    queue: Arc<Queue>,
    entry: Option<Entry>,
}

impl MemorySettle {
    pub fn new(broker: Arc<Broker>, queue: Arc<Queue>, entry: Entry) -> Self {
        MemorySettle {
            broker,
            queue,
            entry: Some(entry),
        }
    }

    fn take(&mut self) -> Option<Entry> {
        let entry = self.entry.take()?;
        self.queue.settled();
        Some(entry)
    }

    fn requeue(&mut self, delay: Option<std::time::Duration>) {
        let Some(entry) = self.take() else { return };
        match self.queue.spec.max_delivery_attempts {
            Some(max) if entry.deliveries >= max => {
                let reason = format!("max delivery attempts ({max}) reached");
                self.broker.dead_letter(&self.queue, entry, &reason);
            }
            // Redeliveries go to the front so the queue's order is kept as far as it can be.
            _ => self.queue.push_unbounded(entry, delay, true),
        }
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.take();
        Ok(())
    }

    async fn nack(mut self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay } => self.requeue(delay),
            Nack::DeadLetter { reason } => {
                if let Some(entry) = self.take() {
                    self.broker.dead_letter(&self.queue, entry, &reason);
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
        self.take();
        Some(Ok(()))
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        // ack and nack take the entry; one still here was abandoned (or its settle future was
        // dropped midway) and goes back to the queue.
        if self.entry.is_some() && !self.queue.is_deleted() {
            self.requeue(None);
        }
    }
}
