//! What the tasks of one run share, counted as they go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mailroom_core::{Error, Message, MessageId};

use super::Failure;
use crate::Tally;

/// What the tasks of one run share.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) enqueued: AtomicUsize,
    pub(super) restarts_over: AtomicBool,
    pub(super) tally: Mutex<Tally>,
    pub(super) failures: Mutex<Vec<Failure>>,
    pub(super) returned: Mutex<Vec<Message>>,
    pub(super) unreturned: AtomicUsize,
    pub(super) confirmed_before: Mutex<Vec<MessageId>>,
    pub(super) confirmed_after: Mutex<Vec<MessageId>>,
    pub(super) required: Mutex<Option<HashSet<MessageId>>>,
    pub(super) slowest_send: Mutex<Duration>,
}

impl Progress {
    pub(super) fn sent(&self, took: Duration) {
        let mut slowest = lock(&self.slowest_send);
        *slowest = (*slowest).max(took);
    }

    pub(super) fn send_failed(&self, mut e: Error, m: Message, took: Duration) {
        lock(&self.failures).push(Failure::of("send", &e, took));
        let back = e.take_undelivered().unwrap_or_else(|| {
            self.unreturned.fetch_add(1, Ordering::SeqCst);
            m
        });
        lock(&self.returned).push(back);
    }

    pub(super) fn all_required_received(&self) -> bool {
        let required = lock(&self.required);
        let tally = lock(&self.tally);
        required
            .as_ref()
            .is_some_and(|r| r.iter().all(|id| tally.contains(id)))
    }
}

impl Failure {
    pub(super) fn of(operation: &'static str, e: &Error, took: Duration) -> Failure {
        Failure {
            operation,
            kind: e.kind(),
            temporary: e.is_temporary(),
            took,
        }
    }
}

/// A poisoned lock only means another task panicked; the data is still what it counted.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
