//! Receiving from the in-memory broker, and settling what was received.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::consumer::closed_consumer;
use mailroom_core::{
    Capability, Consumer, ConsumerOptions, Delivery, DeliveryInfo, Nack, Result, Settle,
};

use crate::backend::Broker;
use crate::queue::{Entry, Pop, Queue};
use crate::BACKEND;

enum Next {
    Delivery(Delivery),
    /// Nothing ready; wait for a push, or until this instant when a delayed message falls due.
    Wait(Option<tokio::time::Instant>),
}

/// A consumer on one in-memory queue. Several consumers on a queue compete for its messages.
///
/// Messages are handed over only when `receive` is called, so nothing is prefetched and
/// `ConsumerOptions::prefetch` has nothing to bound; a consumer holds exactly the deliveries it
/// has received and not yet settled.
pub struct MemoryConsumer {
    broker: Arc<Broker>,
    queue: Arc<Queue>,
    closed: bool,
}

impl MemoryConsumer {
    pub(crate) fn new(broker: Arc<Broker>, queue: &str, options: ConsumerOptions) -> Result<Self> {
        broker.check_open("consume")?;
        if options.replay.is_some() {
            broker
                .capabilities
                .require(Capability::Replay, BACKEND, "consume")?;
        }
        let queue = broker
            .queue(queue)
            .map_err(|e| e.with_operation("consume"))?;
        Ok(MemoryConsumer {
            broker,
            queue,
            closed: false,
        })
    }

    /// A ready message if there is one (expired ones found on the way are dead-lettered), or
    /// when the next delayed message falls due.
    fn try_take(&self) -> Result<Next> {
        loop {
            match self.queue.pop().map_err(|e| e.with_backend(BACKEND))? {
                Pop::Entry(entry) => return Ok(Next::Delivery(self.delivery(entry))),
                Pop::Expired(entry) => {
                    self.broker
                        .dead_letter(&self.queue, entry, "message TTL expired");
                }
                Pop::Empty { next_due } => return Ok(Next::Wait(next_due)),
            }
        }
    }

    fn delivery(&self, entry: Entry) -> Delivery {
        let info = DeliveryInfo {
            attempt: entry.deliveries,
            redelivered: entry.deliveries > 1,
            ..DeliveryInfo::new(self.queue.name())
        };
        let message = entry.message.clone();
        Delivery::new(
            message,
            info,
            Box::new(MemorySettle {
                broker: self.broker.clone(),
                queue: self.queue.clone(),
                entry: Some(entry),
            }),
        )
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            if self.closed || self.broker.is_closed() {
                return Err(closed_consumer(BACKEND));
            }
            // Look first without arming a wake-up: when messages are waiting (the busy case)
            // this skips the Notify's waiter lock entirely.
            if let Next::Delivery(d) = self.try_take()? {
                return Ok(d);
            }
            // Arm the wake-up before looking again, so a push between the look and the wait is
            // not missed. Nothing awaits while holding a message, which keeps this cancel-safe.
            let readable = self.queue.readable().notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            match self.try_take()? {
                Next::Delivery(d) => return Ok(d),
                Next::Wait(Some(due)) => {
                    tokio::select! {
                        _ = &mut readable => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                Next::Wait(None) => readable.await,
            }
        }
    }

    /// Looks at the queue directly: no future is built for a message that is already there.
    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        if self.closed || self.broker.is_closed() {
            return Some(Err(closed_consumer(BACKEND)));
        }
        match self.try_take() {
            Ok(Next::Delivery(d)) => Some(Ok(d)),
            Ok(Next::Wait(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        Ok(())
    }
}

/// Settles one in-memory delivery against the queue it came from.
struct MemorySettle {
    broker: Arc<Broker>,
    queue: Arc<Queue>,
    entry: Option<Entry>,
}

impl MemorySettle {
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
            Nack::Requeue { delay } => {
                if delay.is_some() {
                    self.broker.capabilities.require(
                        Capability::DelayedDelivery,
                        BACKEND,
                        "nack",
                    )?;
                }
                self.requeue(delay);
            }
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
