//! Sending into the in-memory broker: routing, bounds, delays; confirmed once queued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::topology::validate_name;
use mailroom_core::{
    Destination, Error, ErrorKind, Message, PendingConfirm, Producer, Receipt, Result,
};

use crate::backend::Broker;
use crate::BACKEND;

/// A producer on the in-memory broker. A send is confirmed once the message is in every queue it
/// routes to; a full queue with `Overflow::Backpressure` makes `enqueue` wait.
pub struct MemoryProducer {
    broker: Arc<Broker>,
    closed: AtomicBool,
}

impl MemoryProducer {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        MemoryProducer {
            broker,
            closed: AtomicBool::new(false),
        }
    }

    async fn deliver(&self, destination: &Destination, mut message: Message) -> Result<Receipt> {
        let ctx = |e: Error| e.with_backend(BACKEND).with_operation("send");
        if self.closed.load(Ordering::Acquire) {
            return Err(ctx(Error::closed("producer is closed")).with_undelivered(message));
        }
        if let Err(e) = self.broker.check_open("send") {
            return Err(e.with_undelivered(message));
        }
        if let Err(e) = self
            .broker
            .capabilities
            .check_message(&message, BACKEND, "send")
        {
            return Err(e.with_undelivered(message));
        }
        let delay = message.delay();
        message.clear_delay();
        let id = message.id().clone();
        let targets = match destination {
            // The common case, a queue, skips the routing vector (one allocation per send).
            Destination::Queue(name) => match self.broker.queue(name) {
                Ok(queue) => {
                    queue.push(message, delay).await.map_err(ctx)?;
                    return Ok(Receipt::new(id));
                }
                // Names are checked only when the lookup fails: a valid queue name never needs
                // it, and an invalid one deserves a better error than "does not exist".
                Err(e) => {
                    let e = validate_name("destination", name).err().unwrap_or(e);
                    return Err(ctx(e).with_undelivered(message));
                }
            },
            Destination::Exchange { name, routing_key } => {
                match self.broker.route(name, routing_key, &message) {
                    Ok(targets) => targets,
                    Err(e) => return Err(e.with_undelivered(message)),
                }
            }
        };
        let Some((last, others)) = targets.split_last() else {
            if self.broker.config.mandatory {
                return Err(ctx(Error::new(
                    ErrorKind::Unroutable,
                    format!(
                        "no queue is bound to {destination} for this message (mandatory is on)"
                    ),
                ))
                .with_undelivered(message));
            }
            return Ok(Receipt::new(id));
        };
        for queue in others {
            queue.push(message.clone(), delay).await.map_err(ctx)?;
        }
        last.push(message, delay).await.map_err(ctx)?;
        Ok(Receipt::new(id))
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        // Queuing is the confirm here, so the pending confirm is already resolved.
        let receipt = self.deliver(destination, message).await?;
        Ok(PendingConfirm::ready(Ok(receipt)))
    }

    async fn send(&self, destination: &Destination, message: Message) -> Result<Receipt> {
        self.deliver(destination, message).await
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
