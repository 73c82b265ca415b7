//! Receiving from the in-memory broker: taking the next ready message and waiting for one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::consumer::closed_consumer;
use mailroom_core::operation::CONSUME;
use mailroom_core::{Capability, Consumer, ConsumerOptions, Delivery, Error, ErrorKind, Result};

use crate::broker::Broker;
use crate::queue::{Pop, Queue};
use crate::settle::{MemorySettle, SettleTarget};
use crate::BACKEND;

// Returned by value once per receive and never stored: boxing the delivery to shrink it would
// allocate per message.
#[allow(clippy::large_enum_variant)]
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
    /// The broker and queue again, as every delivery's settle handle holds them.
    target: Arc<SettleTarget>,
    /// When the next delayed message falls due, as the last look that found nothing saw it.
    next_due: Option<tokio::time::Instant>,
    /// A settle handle allocated for a look that found nothing, kept for the next look.
    spare: Option<Box<MemorySettle>>,
    closed: bool,
}

impl MemoryConsumer {
    pub(crate) fn new(broker: Arc<Broker>, queue: &str, options: ConsumerOptions) -> Result<Self> {
        broker.check_open(CONSUME)?;
        // Kept under the capability layer's check: a bare backend would otherwise ignore the
        // replay and deliver the queue's next message instead.
        if options.replay.is_some() {
            broker
                .capabilities
                .require(Capability::Replay, BACKEND, CONSUME)?;
        }
        let queue = broker.queue(queue).map_err(|e| e.with_operation(CONSUME))?;
        let target = Arc::new(SettleTarget {
            broker: broker.clone(),
            queue: queue.clone(),
        });
        Ok(MemoryConsumer {
            broker,
            queue,
            target,
            next_due: None,
            spare: None,
            closed: false,
        })
    }

    /// A ready message if there is one (expired ones found on the way are dead-lettered), or
    /// when the next delayed message falls due.
    fn try_take(&mut self) -> Result<Next> {
        match self.take_next() {
            Some(Ok(delivery)) => Ok(Next::Delivery(delivery)),
            Some(Err(e)) => Err(e),
            None => Ok(Next::Wait(self.next_due)),
        }
    }

    /// The next ready message as a delivery (expired ones found on the way are
    /// dead-lettered), or `None` with [`next_due`](Self::next_due) set when nothing is ready.
    /// In `try_receive`'s shape: every enum a delivery passes through on its way out costs a
    /// copy of it, and this is the per-message path of a draining loop.
    ///
    /// The entry is moved from the queue's buffer into its settle box under the queue's lock,
    /// and read from there: returning it to box it after the lock was given up copied it out
    /// of the buffer, through each enum it passed, and into the box.
    #[inline(always)]
    fn take_next(&mut self) -> Option<Result<Delivery>> {
        loop {
            // Allocated (or kept from a look that found nothing) before the lock, not under it.
            let slot = match self.spare.take() {
                Some(slot) => slot,
                None => Box::new(MemorySettle::spare(self.target.clone())),
            };
            let popped = self.queue.pop_with(slot, |mut slot, entry| {
                slot.fill(entry);
                slot
            });
            let popped = match popped {
                Ok(popped) => popped,
                Err(e) => return Some(Err(e.with_backend(BACKEND))),
            };
            match popped {
                Pop::Taken(settle) => return Some(self.delivery(settle)),
                Pop::Expired(entry, slot) => {
                    self.spare = Some(slot);
                    self.broker
                        .dead_letter(&self.queue, *entry, "message TTL expired");
                }
                Pop::Empty { next_due, place } => {
                    self.spare = Some(place);
                    self.next_due = next_due;
                    return None;
                }
            }
        }
    }

    #[inline(always)]
    fn delivery(&self, settle: Box<MemorySettle>) -> Result<Delivery> {
        // Read from the box the entry was moved into under the queue's lock.
        match settle.received(self.queue.source()) {
            Some((message, info)) => Ok(Delivery::new(message, info, settle)),
            // `take_next` fills every handle it hands here.
            None => Err(Error::new(
                ErrorKind::Broker,
                "internal: a settle handle without its message",
            )
            .with_backend(BACKEND)
            .with_operation(CONSUME)),
        }
    }
}

impl MemoryConsumer {
    /// The wait for a message, when none was ready at the first look.
    async fn receive_waiting(&mut self) -> Result<Delivery> {
        // Its own handle on the queue: the wake-up borrows it while a look borrows `self`.
        let queue = self.queue.clone();
        loop {
            if self.closed || self.broker.is_closed() {
                return Err(closed_consumer(BACKEND));
            }
            {
                // Arm the wake-up and count this consumer as waiting before looking again, so
                // a push between the look and the wait is not missed. Nothing awaits while
                // holding a message, which keeps this cancel-safe.
                let readable = queue.readable().notified();
                tokio::pin!(readable);
                readable.as_mut().enable();
                let _waiting = queue.wait_readable();
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
            // Woken, most often by a push: look before arming again, since arming the wake-up
            // and dropping it armed each take the `Notify`'s lock, and the usual look finds
            // the message that woke this consumer. A wake-up that fired is disarmed already,
            // so dropping it takes no lock.
            if let Some(ready) = self.receive_now() {
                return ready;
            }
        }
    }

    /// A delivery if one is ready, without waiting (`None` when `receive` would wait).
    #[inline]
    fn receive_now(&mut self) -> Option<Result<Delivery>> {
        if self.closed || self.broker.is_closed() {
            return Some(Err(closed_consumer(BACKEND)));
        }
        self.take_next()
    }
}

/// The future `async_trait` gives every method of the trait.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `receive` is written out with the signature `async_trait` gives the trait, so that the look
// and the wait share one box.
#[async_trait]
impl Consumer for MemoryConsumer {
    fn receive<'a, 'f>(&'a mut self) -> BoxFuture<'f, Result<Delivery>>
    where
        'a: 'f,
        Self: 'f,
    {
        // One box per receive, holding the look and, only if nothing was there, the wait: a
        // receive is called when `try_receive` found nothing (a draining loop) or by code that
        // waits anyway, so the wait is the usual case and boxing it apart from the look cost
        // a second allocation per wait (measured).
        Box::pin(async move {
            match self.receive_now() {
                Some(ready) => ready,
                None => self.receive_waiting().await,
            }
        })
    }

    /// Looks at the queue directly: no future is built for a message that is already there.
    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        self.receive_now()
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        Ok(())
    }
}
