//! Sending into the in-memory broker: routing, bounds, delays; confirmed once queued.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::operation::SEND;
use mailroom_core::topology::validate_name;
use mailroom_core::{
    Destination, Error, ErrorKind, Message, PendingConfirm, Producer, Receipt, Result, TryEnqueue,
};

use crate::broker::Broker;
use crate::error;
use crate::queue::{Added, NotIn, Queue};
use crate::BACKEND;

/// The future `async_trait` gives every method of the trait.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Names this backend and the operation on an error from a send.
fn context(e: Error) -> Error {
    error::context(e, SEND)
}

/// A producer on the in-memory broker. A send is confirmed once the message is in every queue it
/// routes to; a full queue with `Overflow::Backpressure` makes `enqueue` wait.
///
/// A send that needs no waiting is done when `send` (or `enqueue`) is called, and the future
/// it returns is already complete: that saves boxing the whole send per message. Only a send
/// that waits for room in a full queue, or goes through an exchange, does its work when polled.
pub struct MemoryProducer {
    broker: Arc<Broker>,
    closed: AtomicBool,
    /// The queue sent to last, by name: a run of sends to one queue skips the broker's map and
    /// its lock. A deleted queue is looked up again (it may have been declared anew).
    last: Mutex<Option<(Arc<str>, Arc<Queue>)>>,
    /// The first queue this producer found, read without a lock: a producer that sends to one
    /// queue (the usual one) pays for no lock but the queue's own. Set once; a send to another
    /// queue, or to this one deleted, goes through [`last`](Self::last).
    first: OnceLock<(Arc<str>, Arc<Queue>)>,
}

impl MemoryProducer {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        MemoryProducer {
            broker,
            closed: AtomicBool::new(false),
            last: Mutex::new(None),
            first: OnceLock::new(),
        }
    }

    /// Put `message` into the queue called `name` with `put`, the queue found through the
    /// producer's last one when it is the same. A failed lookup gives the message back (boxed:
    /// the error path is rare, and a large `Err` would widen every call's result).
    #[inline]
    fn with_queue<T>(
        &self,
        name: &Arc<str>,
        message: Message,
        put: impl FnOnce(&Arc<Queue>, Message) -> T,
    ) -> std::result::Result<T, Box<(Error, Message)>> {
        match self.first_queue(name) {
            Some(queue) => Ok(put(queue, message)),
            None => self.with_queue_locked(name, message, put),
        }
    }

    /// The queue called `name` if it is this producer's first one, still declared: found
    /// without a lock.
    #[inline(always)]
    fn first_queue(&self, name: &Arc<str>) -> Option<&Arc<Queue>> {
        let (cached, queue) = self.first.get()?;
        ((Arc::ptr_eq(cached, name) || cached == name) && !queue.is_deleted()).then_some(queue)
    }

    /// [`with_queue`](Self::with_queue) past the lock-free first queue.
    #[inline(never)]
    fn with_queue_locked<T>(
        &self,
        name: &Arc<str>,
        message: Message,
        put: impl FnOnce(&Arc<Queue>, Message) -> T,
    ) -> std::result::Result<T, Box<(Error, Message)>> {
        // Only this producer's sends take this lock, one short push at a time.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let hit = last.as_ref().is_some_and(|(cached, queue)| {
            (Arc::ptr_eq(cached, name) || cached == name) && !queue.is_deleted()
        });
        if !hit {
            match self.broker.queue(name) {
                Ok(queue) => {
                    // Only the first queue found is kept here; later ones live in `last`.
                    let _ = self.first.set((name.clone(), queue.clone()));
                    *last = Some((name.clone(), queue));
                }
                Err(e) => return Err(Box::new((e, message))),
            }
        }
        match &*last {
            Some((_, queue)) => Ok(put(queue, message)),
            None => Err(Box::new((error::no_queue(name), message))),
        }
    }

    /// Refuses a send once this producer or the broker is closed.
    #[inline]
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(context(Error::closed("producer is closed")));
        }
        self.broker.check_open(SEND)
    }

    /// The capability check's refusal of a message over the broker's declared limits, made
    /// here so that the check needs no wrapper around this producer (see
    /// `Backend::producer_refuses_unsupported`): the same call, so the same errors. This broker
    /// has every exchange kind, so the check's refusal of exchange sends never applies.
    #[inline(always)]
    fn check_limits(&self, message: &Message) -> Result<()> {
        // The usual message passes on its length alone (see `Broker::size_limit_only`); the
        // check itself makes the refusal, so its text is the layer's.
        if let Some(max) = self.broker.size_limit_only {
            if message.encoded_len() <= max {
                return Ok(());
            }
        }
        self.broker
            .capabilities
            .check_message(message, BACKEND, SEND)
    }

    /// The checks every send passes before it touches a queue: the message back, ready to
    /// queue, with its delay taken off. The limits come first, as the capability check
    /// outside a backend would make them.
    #[inline(always)]
    fn accept(&self, mut message: Message) -> Result<(Message, Option<Duration>)> {
        if let Err(e) = self.check_limits(&message).and_then(|()| self.check_open()) {
            return Err(e.with_undelivered(message));
        }
        let delay = message.delay();
        message.clear_delay();
        Ok((message, delay))
    }

    /// A send, done at once where nothing needs waiting for: only a full queue that makes
    /// producers wait and a route through an exchange (each target may be full) go the
    /// waiting way, boxed.
    ///
    /// Split so because every send's future holds this one: a send future over the
    /// allocator's 1 KiB cache size made every send take the allocator's slow path, about
    /// 100 ns more per message (measured).
    fn deliver<'a>(&'a self, destination: &'a Destination, message: Message) -> Delivered<'a> {
        let (message, delay) = match self.accept(message) {
            Ok(accepted) => accepted,
            Err(e) => return Delivered::Now(Err(e)),
        };
        let id = message.id().clone();
        let name = match destination {
            Destination::Queue(name) => name,
            Destination::Exchange { name, routing_key } => {
                return Delivered::Later(Box::pin(self.route(
                    destination,
                    name,
                    routing_key,
                    message,
                    delay,
                )))
            }
        };
        // Only a message that did not go in comes back out of the lock, with its queue: the
        // usual outcome is a bare `None`, with no entry or error moved around.
        let added = self.with_queue(name, message, |queue, message| {
            // Bound first: the lock (inside the `Filling`) is given up before anything awaits.
            match queue.filling().add(queue.entry(message), delay) {
                Added::Yes => None,
                not_in => Some(Box::new((queue.clone(), not_in))),
            }
        });
        match added {
            Ok(None) => Delivered::Now(Ok(Receipt::new(id))),
            Ok(Some(not_in)) => match *not_in {
                (queue, Added::Full(entry)) => Delivered::Later(Box::pin(async move {
                    queue.push_when_room(entry, delay).await.map_err(context)?;
                    Ok(Receipt::new(id))
                })),
                (_, Added::Refused(e)) => Delivered::Now(Err(context(e))),
                (_, Added::Yes) => Delivered::Now(Ok(Receipt::new(id))),
            },
            // Names are checked only when the lookup fails: a valid queue name never needs it,
            // and an invalid one deserves a better error than "does not exist".
            Err(failed) => {
                let (e, message) = *failed;
                let e = validate_name("destination", name).err().unwrap_or(e);
                Delivered::Now(Err(context(e).with_undelivered(message)))
            }
        }
    }

    /// Drain `messages` into `destination`, in order, handing `record` one result per message.
    /// Messages for one queue go in under one lock, as many as it has room for; a queue that
    /// makes producers wait holds the rest back until there is room.
    async fn put_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        mut record: impl FnMut(Result<Receipt>) + Send,
    ) {
        // An exchange routes each message on its own, and a missing queue's error is made per
        // message: both go the one-by-one way.
        let queue = match destination {
            Destination::Queue(name) => self.broker.queue(name).ok(),
            Destination::Exchange { .. } => None,
        };
        let Some(queue) = queue else {
            for message in messages.drain(..) {
                record(self.deliver(destination, message).wait().await);
            }
            return;
        };
        let mut messages = messages.drain(..);
        while messages.len() > 0 {
            let mut blocked = None;
            {
                let mut filling = queue.filling();
                for message in messages.by_ref() {
                    let (message, delay) = match self.accept(message) {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            record(Err(e));
                            continue;
                        }
                    };
                    let id = message.id().clone();
                    match filling.add(queue.entry(message), delay) {
                        Added::Yes => record(Ok(Receipt::new(id))),
                        Added::Refused(e) => record(Err(context(e))),
                        Added::Full(entry) => {
                            blocked = Some((entry, delay, id));
                            break;
                        }
                    }
                }
            }
            // Waits for room outside the lock; the messages after it stay behind it.
            if let Some((entry, delay, id)) = blocked {
                let pushed = queue.push(entry, delay).await;
                record(pushed.map(|()| Receipt::new(id)).map_err(context));
            }
        }
    }

    /// A send through an exchange: a copy to every queue it routes to.
    async fn route(
        &self,
        destination: &Destination,
        exchange: &str,
        routing_key: &str,
        message: Message,
        delay: Option<Duration>,
    ) -> Result<Receipt> {
        let id = message.id().clone();
        let targets = match self.broker.route(exchange, routing_key, &message) {
            Ok(targets) => targets,
            Err(e) => return Err(e.with_undelivered(message)),
        };
        let Some((last, others)) = targets.split_last() else {
            if self.broker.config.mandatory {
                return Err(context(Error::new(
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
            queue
                .push(queue.entry(message.clone()), delay)
                .await
                .map_err(context)?;
        }
        last.push(last.entry(message), delay)
            .await
            .map_err(context)?;
        Ok(Receipt::new(id))
    }
}

/// A send done at once, or the wait for it.
enum Delivered<'a> {
    Now(Result<Receipt>),
    Later(BoxFuture<'a, Result<Receipt>>),
}

impl Delivered<'_> {
    async fn wait(self) -> Result<Receipt> {
        match self {
            Delivered::Now(result) => result,
            Delivered::Later(waiting) => waiting.await,
        }
    }
}

// `enqueue` and `send` are written out with the signatures `async_trait` gives the trait: a
// send done at once returns its result as a small ready future, not the whole send boxed.
#[async_trait]
impl Producer for MemoryProducer {
    fn enqueue<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        message: Message,
    ) -> BoxFuture<'f, Result<PendingConfirm>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        // Queuing is the confirm here, so the pending confirm is already resolved.
        let confirmed = |receipt| PendingConfirm::ready(Ok(receipt));
        match self.deliver(destination, message) {
            Delivered::Now(result) => Box::pin(std::future::ready(result.map(confirmed))),
            Delivered::Later(waiting) => Box::pin(async move { waiting.await.map(confirmed) }),
        }
    }

    /// A message for a queue with room goes in at once, confirmed (queuing is the confirm);
    /// a delayed one, one through an exchange (each target may be full) and one for a full
    /// queue that makes producers wait come back for `enqueue`.
    fn try_enqueue(&self, destination: &Destination, message: Message) -> TryEnqueue {
        // Refused before it is handed back, as the capability check would.
        if let Err(e) = self.check_limits(&message) {
            return TryEnqueue::Done(Err(e.with_undelivered(message)));
        }
        let name = match destination {
            Destination::Queue(name) if message.delay().is_none() => name,
            _ => return TryEnqueue::Wait(message),
        };
        // `accept`'s check, without moving the message through it: it has no delay to take off.
        if let Err(e) = self.check_open() {
            return TryEnqueue::Done(Err(e.with_undelivered(message)));
        }
        let id = message.id().clone();
        // The usual queue called straight, not through a closure: the message is moved once
        // less on its way into the queue.
        let added = match self.first_queue(name) {
            Some(queue) => Ok(queue.try_push(message)),
            None => self.with_queue_locked(name, message, |queue, message| queue.try_push(message)),
        };
        match added {
            Ok(Ok(())) => TryEnqueue::Done(Ok(PendingConfirm::ready(Ok(Receipt::new(id))))),
            Ok(Err(not_in)) => match *not_in {
                NotIn::Full(message) => TryEnqueue::Wait(message),
                NotIn::Refused(e) => TryEnqueue::Done(Err(context(e))),
            },
            Err(failed) => {
                let (e, message) = *failed;
                let e = validate_name("destination", name).err().unwrap_or(e);
                TryEnqueue::Done(Err(context(e).with_undelivered(message)))
            }
        }
    }

    /// Messages for one queue go in under one lock, as many as it has room for; a queue that
    /// makes producers wait holds the rest back until there is room.
    async fn enqueue_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        pending: &mut Vec<Result<PendingConfirm>>,
    ) {
        pending.reserve(messages.len());
        self.put_batch(destination, messages, |sent| {
            pending.push(sent.map(|receipt| PendingConfirm::ready(Ok(receipt))))
        })
        .await;
    }

    /// As `enqueue_batch`, with each result written once, as a receipt: there is no pending
    /// confirm to build and then take apart, since queuing is the confirm.
    async fn send_batch(
        &self,
        destination: &Destination,
        mut messages: Vec<Message>,
    ) -> Result<Vec<Result<Receipt>>> {
        let mut results = Vec::with_capacity(messages.len());
        self.put_batch(destination, &mut messages, |sent| results.push(sent))
            .await;
        Ok(results)
    }

    fn send<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        message: Message,
    ) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        match self.deliver(destination, message) {
            Delivered::Now(result) => Box::pin(std::future::ready(result)),
            Delivered::Later(waiting) => waiting,
        }
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
