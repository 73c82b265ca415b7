//! One queue: ready messages in order, delayed ones by due time, and the bound between them and
//! producers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mailroom_core::{Error, Message, Overflow, QueueSpec, Result};

use crate::codec::Entry;
use crate::error;
use tokio::sync::Notify;
use tokio::time::Instant;

struct Delayed {
    due: Instant,
    seq: u64,
    entry: Entry,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<Entry>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    /// Deliveries handed out, ever; less [`Queue::settled`], the ones not yet settled.
    handed_out: u64,
    seq: u64,
}

impl State {
    fn held(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    fn promote_due(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.ready.push_back(d.entry);
            }
        }
    }
}

/// How many messages a queue holds, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Deliverable now.
    pub ready: usize,
    /// Waiting for their delay to pass.
    pub delayed: usize,
    /// Delivered and not yet settled.
    pub unacked: usize,
}

/// Longest a producer held by a full queue waits before it looks for room again, whether or
/// not it was woken: room a consumer made and then stopped, above the low-water mark, is
/// found within this.
const ROOM_RECHECK: Duration = Duration::from_millis(10);

/// What [`Queue::pop_with`] found, with the `place` it was given back where nothing took it.
pub(crate) enum Pop<R, P> {
    /// The next message, as `take` made it.
    Taken(R),
    /// Expired by TTL: the caller dead-letters it (boxed: rare, and it would widen every
    /// pop's result).
    Expired(Box<Entry>, P),
    /// Nothing ready; when the next delayed message falls due.
    Empty { next_due: Option<Instant>, place: P },
}

/// Why [`Queue::try_push`] did not take a message.
pub(crate) enum NotIn {
    /// The queue is full and makes producers wait: the message back, for the waiting way.
    Full(Message),
    /// Refused (a full queue that rejects, a deleted queue), the message inside the error.
    Refused(Error),
}

pub(crate) struct Queue {
    pub spec: QueueSpec,
    /// The name as every delivery's `source`: shared, so a delivery does not copy it.
    source: Arc<str>,
    /// On cache lines of its own: both sides write the lock and the buffer's ends per message,
    /// and sharing a line with what each side only reads per message (the spec, the counts of
    /// waiters, the deleted flag) would make every write cost the other side a miss there too.
    state: CacheLine<Mutex<State>>,
    readable: Notify,
    writable: Notify,
    /// Consumers armed on `readable`, about to wait or waiting. A push wakes one only when
    /// there is one: a consumer that is busy taking messages costs its producer no wake-up.
    readers: AtomicUsize,
    /// Producers armed on `writable`, waiting for room; a pop makes room for one of them.
    writers: AtomicUsize,
    /// Set by the pop that wakes a waiting producer, cleared by each waiting producer as it
    /// arms again: until then, later pops wake no one. A producer woken while the consumer
    /// drains would otherwise get one wake-up per message taken meanwhile, each a call into
    /// the `Notify` and a compare-and-swap on the consumer's side, and, stored as a permit,
    /// an extra look at the queue on the producer's. A woken producer that gets in passes the
    /// wake-up on to the next waiting one (see [`push_when_room`](Self::push_when_room)).
    writer_woken: AtomicBool,
    /// A held producer is woken once the queue holds at most this many (a quarter of the bound
    /// below it; the bound itself for a bound under 4). Woken at the first free slot, a
    /// producer that outpaces its consumer parks again after one message: a park and a wake-up
    /// (two futex calls, a context switch on each side) per message taken, measured at 25-30
    /// thousand per million messages in `mailroom bench`. [`ROOM_RECHECK`] keeps a producer
    /// from waiting on room that a consumer which stopped taking left above this mark.
    low_water: usize,
    /// Deliveries settled, ever. Kept apart from the lock: a settle touches nothing else. On
    /// a cache line of its own: the consumer's thread writes it per ack, and sharing a line with
    /// the flags and counts a producer reads per send would make every ack cost the producer
    /// a cache miss.
    settled: CacheLine<AtomicU64>,
    deleted: AtomicBool,
}

/// A value alone on its cache line (128 bytes: adjacent-line prefetching pairs 64-byte lines on
/// x86).
#[repr(align(128))]
#[derive(Default)]
struct CacheLine<T>(T);

/// Counts one waiter (a consumer on `readable`, a producer on `writable`) while it is armed,
/// until it stops waiting, however it stops (woken, or its future dropped).
///
/// It is counted before it looks at the queue, under the lock the other side takes to change
/// the queue: a push (or pop) that the look missed comes after it in the lock's order, so
/// it sees the count and wakes the waiter.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Queue {
    pub fn new(spec: QueueSpec) -> Self {
        let low_water = spec
            .max_length
            .map_or(usize::MAX, |max| (max - max / 4) as usize);
        Queue {
            source: Arc::from(spec.name.as_str()),
            spec,
            state: CacheLine(Mutex::new(State::default())),
            readable: Notify::new(),
            writable: Notify::new(),
            readers: AtomicUsize::new(0),
            writers: AtomicUsize::new(0),
            writer_woken: AtomicBool::new(false),
            low_water,
            settled: CacheLine(AtomicU64::new(0)),
            deleted: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The name, shared (for a delivery's `source`).
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated (every critical
        // section is a single push/pop), so a poisoned lock is still safe to use.
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.readable.notify_waiters();
        self.writable.notify_waiters();
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    fn deleted_error(&self) -> Error {
        error::queue_deleted(self.name())
    }

    /// Add an entry (made by [`entry`](Queue::entry)), waiting for room or refusing, as the
    /// queue's overflow policy says. A refused message comes back inside the error.
    ///
    /// A queue with room takes the entry at once, without arming a wake-up; only a full queue
    /// that makes producers wait goes the slow way, boxed. That keeps this future (held inside
    /// every send's) small: a send future over the allocator's 1 KiB cache size costs every
    /// send a slow allocation, measured at about 100 ns.
    pub async fn push(&self, entry: Entry, delay: Option<Duration>) -> Result<()> {
        // Bound first: the lock (inside the `Filling`) is given up before anything awaits.
        let added = self.filling().add(entry, delay);
        match added {
            Added::Yes => Ok(()),
            Added::Refused(e) => Err(e),
            Added::Full(entry) => Box::pin(self.push_when_room(entry, delay)).await,
        }
    }

    /// Wait for room, then add the entry (or refuse it, if the queue was deleted meanwhile).
    pub async fn push_when_room(&self, mut entry: Entry, delay: Option<Duration>) -> Result<()> {
        let _waiting = Waiting::new(&self.writers);
        loop {
            // Armed before looking, so room made between the look and the wait is not missed.
            let writable = self.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            // Before the look, under whose lock a pop it missed comes after: that pop sees
            // the flag down and wakes a waiter.
            self.writer_woken.store(false, Ordering::SeqCst);
            let added = self.filling().add(entry, delay);
            match added {
                Added::Yes => {
                    // Pops since this producer was woken may have made room for others, and
                    // woke no one (see `writer_woken`): the next waiter looks for itself.
                    if self.writers.load(Ordering::SeqCst) > 1 {
                        self.writable.notify_one();
                    }
                    return Ok(());
                }
                Added::Refused(e) => return Err(e),
                Added::Full(back) => entry = back,
            }
            // Woken at the low-water mark (see `low_water`), or after a while regardless.
            let _ = tokio::time::timeout(ROOM_RECHECK, writable).await;
        }
    }

    /// Put several messages in under one lock (see [`Filling`]).
    #[inline]
    pub fn filling(&self) -> Filling<'_> {
        Filling {
            queue: self,
            state: Some(self.lock()),
            added: 0,
        }
    }

    fn full_error(&self, held: usize) -> Error {
        error::queue_full(self.name(), held)
    }

    /// A fresh entry for this queue (timestamped when the queue expires messages).
    #[inline]
    pub fn entry(&self, message: Message) -> Entry {
        Entry::new(message, self.spec.message_ttl.is_some())
    }

    /// Add a message whatever the bound: for redeliveries and dead letters, which were already
    /// accepted once and must not be lost or block a settle.
    pub fn push_unbounded(&self, entry: Entry, delay: Option<Duration>, front: bool) {
        let mut state = self.lock();
        if front && delay.is_none() {
            state.ready.push_front(entry);
        } else {
            self.insert(&mut state, entry, delay);
        }
        drop(state);
        self.wake_reader();
    }

    /// Wake a consumer waiting for a message, if one is.
    #[inline]
    fn wake_reader(&self) {
        if self.readers.load(Ordering::SeqCst) > 0 {
            self.readable.notify_one();
        }
    }

    /// Count a consumer as waiting for a message (see [`Waiting`]): taken before it looks.
    pub fn wait_readable(&self) -> Waiting<'_> {
        Waiting::new(&self.readers)
    }

    #[inline]
    fn insert(&self, state: &mut State, entry: Entry, delay: Option<Duration>) {
        match delay.filter(|d| !d.is_zero()) {
            Some(delay) => {
                state.seq += 1;
                let seq = state.seq;
                state.delayed.push(Reverse(Delayed {
                    due: Instant::now() + delay,
                    seq,
                    entry,
                }));
            }
            None => state.ready.push_back(entry),
        }
    }

    /// Take the next deliverable message, if any, handing it to `take` together with `place`
    /// once the lock is given up.
    ///
    /// `take` moves the entry straight to where it stays (the consumer's settle box, allocated
    /// before the lock): returned to be boxed by the caller, it was copied through each enum it
    /// passed, and into the box. A pop that does not call `take` gives `place` back. A pop on
    /// a deleted queue drops it.
    #[inline(always)]
    pub fn pop_with<P, R>(&self, place: P, take: impl FnOnce(P, Entry) -> R) -> Result<Pop<R, P>> {
        if self.is_deleted() {
            return Err(self.deleted_error());
        }
        let mut state = self.lock();
        if !state.delayed.is_empty() {
            state.promote_due(Instant::now());
        }
        let expired = match state.ready.front() {
            None => {
                let next_due = state.delayed.peek().map(|Reverse(d)| d.due);
                return Ok(Pop::Empty { next_due, place });
            }
            Some(front) => match (self.spec.message_ttl, front.enqueued_at) {
                (Some(ttl), Some(at)) => at.elapsed() > ttl,
                _ => false,
            },
        };
        let Some(mut entry) = state.ready.pop_front() else {
            return Ok(Pop::Empty {
                next_due: None,
                place,
            });
        };
        if expired {
            drop(state);
            self.wake_writer();
            return Ok(Pop::Expired(Box::new(entry), place));
        }
        state.handed_out += 1;
        let held = state.held();
        drop(state);
        if held <= self.low_water {
            self.wake_writer();
        }
        // Moved into its place after the lock is given up: the copy (and whatever `take` does)
        // is not time the producer waits for the lock.
        entry.deliveries += 1;
        Ok(Pop::Taken(take(place, entry)))
    }

    /// Wake a producer waiting for room, if one is (only a bounded queue has them).
    #[inline]
    fn wake_writer(&self) {
        if self.writers.load(Ordering::SeqCst) > 0
            && !self.writer_woken.load(Ordering::SeqCst)
            && !self.writer_woken.swap(true, Ordering::SeqCst)
        {
            self.writable.notify_one();
        }
    }

    /// Add one message now if there is room: the one-by-one send's way, the entry built in
    /// the queue's buffer (no [`Filling`], no entry moved through it). A full queue that makes
    /// producers wait hands the message back for the waiting way; boxed, as is a refusal, so
    /// the usual result is a bare `Ok`.
    #[inline]
    pub fn try_push(&self, message: Message) -> std::result::Result<(), Box<NotIn>> {
        if self.is_deleted() {
            return Err(Box::new(NotIn::Refused(
                self.deleted_error().with_undelivered(message),
            )));
        }
        let mut state = self.lock();
        if let Some(max) = self.spec.max_length {
            let held = state.held();
            if held as u64 >= max {
                drop(state);
                if self.spec.overflow == Overflow::Reject {
                    return Err(Box::new(NotIn::Refused(
                        self.full_error(held).with_undelivered(message),
                    )));
                }
                return Err(Box::new(NotIn::Full(message)));
            }
        }
        state
            .ready
            .push_back(Entry::new(message, self.spec.message_ttl.is_some()));
        drop(state);
        self.wake_reader();
        Ok(())
    }

    pub fn readable(&self) -> &Notify {
        &self.readable
    }

    /// One delivery was settled (acked, nacked or abandoned).
    pub fn settled(&self) {
        self.settled.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn depth(&self) -> QueueDepth {
        let state = self.lock();
        let settled = self.settled.0.load(Ordering::Relaxed);
        QueueDepth {
            ready: state.ready.len(),
            delayed: state.delayed.len(),
            unacked: state.handed_out.saturating_sub(settled) as usize,
        }
    }

    /// Remove everything (the queue is being deleted); returns how many messages were dropped.
    pub fn purge(&self) -> usize {
        let mut state = self.lock();
        let n = state.held();
        state.ready.clear();
        state.delayed.clear();
        n
    }
}

/// What [`Filling::add`] did with a message.
pub(crate) enum Added {
    Yes,
    /// The queue is full and makes producers wait: the entry comes back, to be pushed the
    /// waiting way (after the lock is given up).
    Full(Entry),
    /// Refused (a full queue that rejects, a deleted queue), the message inside the error.
    Refused(Error),
}

/// Messages going into one queue under one lock: a batch pays for the lock and for waking
/// consumers once, not per message. Consumers are woken when it is dropped.
pub(crate) struct Filling<'a> {
    queue: &'a Queue,
    state: Option<MutexGuard<'a, State>>,
    added: usize,
}

impl Filling<'_> {
    /// Add one entry if there is room, as [`Queue::push`] would without waiting.
    #[inline]
    pub fn add(&mut self, entry: Entry, delay: Option<Duration>) -> Added {
        let queue = self.queue;
        if queue.is_deleted() {
            return Added::Refused(queue.deleted_error().with_undelivered(entry.message));
        }
        let Some(state) = self.state.as_mut() else {
            return Added::Full(entry);
        };
        let full = queue
            .spec
            .max_length
            .is_some_and(|max| state.held() as u64 >= max);
        if !full {
            queue.insert(state, entry, delay);
            self.added += 1;
            return Added::Yes;
        }
        if queue.spec.overflow == Overflow::Reject {
            let held = state.held();
            return Added::Refused(queue.full_error(held).with_undelivered(entry.message));
        }
        Added::Full(entry)
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        // The lock first: a woken consumer would only block on it.
        drop(self.state.take());
        for _ in 0..self.added.min(self.queue.readers.load(Ordering::SeqCst)) {
            self.queue.readable.notify_one();
        }
    }
}
