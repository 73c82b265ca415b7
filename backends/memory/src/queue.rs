//! One queue: ready messages in order, delayed ones by due time, and the bound between them and
//! producers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mailroom_core::{Error, ErrorKind, Message, Overflow, QueueSpec, Result};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A message waiting in a queue, with how many times it has been delivered.
pub(crate) struct Entry {
    pub message: Message,
    pub deliveries: u32,
    /// Only kept for queues with a TTL: reading the clock per message is not free.
    pub enqueued_at: Option<Instant>,
}

impl Entry {
    pub fn new(message: Message) -> Self {
        Entry {
            message,
            deliveries: 0,
            enqueued_at: None,
        }
    }
}

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
    unacked: usize,
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

/// What `pop` found.
pub(crate) enum Pop {
    Entry(Entry),
    /// Expired by TTL: the caller dead-letters it.
    Expired(Entry),
    Empty {
        next_due: Option<Instant>,
    },
}

pub(crate) struct Queue {
    pub spec: QueueSpec,
    state: Mutex<State>,
    readable: Notify,
    writable: Notify,
    deleted: AtomicBool,
}

impl Queue {
    pub fn new(spec: QueueSpec) -> Self {
        Queue {
            spec,
            state: Mutex::new(State::default()),
            readable: Notify::new(),
            writable: Notify::new(),
            deleted: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated (every critical
        // section is a single push/pop), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        Error::not_found(format!("queue '{}' was deleted", self.name()))
    }

    /// Add a message, waiting for room or refusing, as the queue's overflow policy says. A
    /// refused message comes back inside the error.
    pub async fn push(&self, message: Message, delay: Option<Duration>) -> Result<()> {
        let entry = self.entry(message);
        loop {
            let writable = self.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            if self.is_deleted() {
                return Err(self.deleted_error().with_undelivered(entry.message));
            }
            {
                let mut state = self.lock();
                let full = self
                    .spec
                    .max_length
                    .is_some_and(|max| state.held() as u64 >= max);
                if !full {
                    self.insert(&mut state, entry, delay);
                    drop(state);
                    self.readable.notify_one();
                    return Ok(());
                }
                if self.spec.overflow == Overflow::Reject {
                    let message = entry.message;
                    return Err(Error::new(
                        ErrorKind::QueueFull,
                        format!(
                            "queue '{}' is full ({} messages, overflow = reject)",
                            self.name(),
                            state.held()
                        ),
                    )
                    .with_undelivered(message));
                }
            }
            writable.await;
        }
    }

    /// A fresh entry for this queue (timestamped when the queue expires messages).
    pub fn entry(&self, message: Message) -> Entry {
        let mut entry = Entry::new(message);
        if self.spec.message_ttl.is_some() {
            entry.enqueued_at = Some(Instant::now());
        }
        entry
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
        self.readable.notify_one();
    }

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

    /// Take the next deliverable message, if any.
    pub fn pop(&self) -> Result<Pop> {
        if self.is_deleted() {
            return Err(self.deleted_error());
        }
        let mut state = self.lock();
        if !state.delayed.is_empty() {
            state.promote_due(Instant::now());
        }
        let Some(mut entry) = state.ready.pop_front() else {
            return Ok(Pop::Empty {
                next_due: state.delayed.peek().map(|Reverse(d)| d.due),
            });
        };
        let expired = match (self.spec.message_ttl, entry.enqueued_at) {
            (Some(ttl), Some(at)) => at.elapsed() > ttl,
            _ => false,
        };
        if !expired {
            entry.deliveries += 1;
            state.unacked += 1;
        }
        drop(state);
        self.writable.notify_one();
        if expired {
            return Ok(Pop::Expired(entry));
        }
        Ok(Pop::Entry(entry))
    }

    pub fn readable(&self) -> &Notify {
        &self.readable
    }

    pub fn settled(&self) {
        let mut state = self.lock();
        state.unacked = state.unacked.saturating_sub(1);
    }

    pub fn depth(&self) -> QueueDepth {
        let state = self.lock();
        QueueDepth {
            ready: state.ready.len(),
            delayed: state.delayed.len(),
            unacked: state.unacked,
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
