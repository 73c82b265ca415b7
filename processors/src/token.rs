//! The settle obligation of one input, shared by everything derived from it.
//!
//! Every input delivery becomes an [`Input`] behind an `Arc`; every item derived from it carries a
//! [`Token`]. A token is finished explicitly (`done`, `requeue`) when its branch is confirmed by a
//! sink, filtered, skipped or dead-lettered. The input is acked when its last token is done. A
//! token that is merely *dropped* (a failed pipeline, a drain timeout, an aborted task) marks its
//! input abandoned: the delivery is then dropped unsettled and the broker redelivers it. So a
//! crash at any point can only cause a duplicate, never a loss.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mailroom_core::delivery::Settlement as Obligation;
use mailroom_core::{DeliveryInfo, Message, Nack};
use tokio::sync::{mpsc, Notify};

use crate::metrics::PipelineCounters;

/// The bound on inputs held at once: a slot is taken when an input is received and given back
/// once it is settled (or released unsettled).
///
/// A counter and a wake-up rather than a semaphore: a slot is taken and given back once per
/// input, and giving it back here is one atomic add plus a wake-up that is lock-free while
/// nobody waits, where a semaphore locks its waiter list on every release.
pub(crate) struct Slots {
    held: AtomicUsize,
    max: usize,
    /// Tasks waiting in `take`: a slot given back wakes one only when there is one.
    waiters: AtomicUsize,
    freed: Notify,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            held: AtomicUsize::new(0),
            max: max.max(1),
            waiters: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Take a slot if one is free; returns how many are held now.
    pub fn try_take(&self) -> Option<usize> {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held < self.max).then_some(held + 1)
            })
            .ok()
            .map(|before| before + 1)
    }

    /// Wait for a free slot and take it; returns how many are held now. Cancel-safe: nothing
    /// is taken unless this returns.
    pub async fn take(&self) -> usize {
        let _waiting = Waiting::new(&self.waiters);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered (as a waiter, then for the wake-up) before looking, so a slot given
            // back in between is not missed: with both sides sequentially consistent, either
            // this look sees the slot or `give_back` sees the waiter.
            freed.as_mut().enable();
            if let Some(held) = self.try_take() {
                return held;
            }
            freed.await;
        }
    }

    pub fn give_back(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// Slots held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Counts a task in `Slots::take` for as long as it waits there.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the pipeline shares with every input it holds.
pub(crate) struct Shared {
    pub counters: Arc<PipelineCounters>,
    pub slots: Arc<Slots>,
    /// Settlements finished outside an async context (a filter) go to the settler task. The
    /// channel holds at most `max_in_flight` entries: each is an input that holds a slot.
    pub settle_tx: mpsc::UnboundedSender<Settlement>,
    /// Whether inputs keep a copy of their original message: only a dead-letter policy or a
    /// late side output reads it, so without one the message moves into the stages uncopied.
    /// Set while the pipeline is built, before any input arrives.
    pub keep_originals: AtomicBool,
}

struct Held {
    /// The obligation to settle the input with its broker; taken once, by the last branch.
    obligation: Option<Obligation>,
    /// Whether the input still holds its in-flight slot.
    slot: bool,
    /// The input as received, for dead letters and late data (see `Shared::keep_originals`);
    /// boxed so that inputs that keep none stay small.
    original: Option<Box<Message>>,
    info: DeliveryInfo,
    /// Set when a branch asked for the input to be requeued (after this delay).
    requeue: Option<Option<Duration>>,
}

/// Where an input sits in its source: (source lane, offset), for brokers with offsets.
pub(crate) type Position = (u64, i64);

/// One input delivery and how many branches derived from it are still open.
pub(crate) struct Input {
    held: Mutex<Held>,
    /// Set when the broker gives offsets: a redelivery of the same message has the same one.
    position: Option<Position>,
    pending: AtomicUsize,
    abandoned: AtomicBool,
    shared: Arc<Shared>,
}

impl Input {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Critical sections are single `take`s: a poisoned lock still holds valid state.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(obligation) = held.obligation.take() {
            // Dropping the obligation unsettled hands the input back to the broker for
            // redelivery.
            self.shared
                .counters
                .abandoned
                .fetch_add(1, Ordering::Relaxed);
            drop(obligation);
        }
        if std::mem::take(&mut held.slot) {
            self.shared.slots.give_back();
        }
    }
}

/// The settle of one input, ready to run: ack, or nack-requeue when a branch asked for it.
pub(crate) struct Settlement {
    /// Every branch of it is finished; only a branch still dropping its handle may share it.
    input: Arc<Input>,
}

/// How a settle that could not finish at once continues.
pub(crate) type SettleLater = BoxFuture<'static, ()>;

impl Settlement {
    /// Take the obligation and the requeue request. The last branch usually holds the only
    /// handle, so no lock is needed; one still being dropped elsewhere means a short lock.
    fn take(&mut self) -> Option<(Obligation, Option<Option<Duration>>)> {
        let held = match Arc::get_mut(&mut self.input) {
            Some(input) => input.held.get_mut().unwrap_or_else(|p| p.into_inner()),
            None => {
                let mut held = self.input.lock();
                let obligation = held.obligation.take()?;
                return Some((obligation, held.requeue));
            }
        };
        Some((held.obligation.take()?, held.requeue))
    }

    /// Settle with the broker, then free the input's in-flight slot.
    pub async fn run(mut self) {
        let Some((obligation, requeue)) = self.take() else {
            return;
        };
        let result = match requeue {
            None => obligation.ack().await,
            Some(delay) => obligation.nack(nack(delay)).await,
        };
        self.settled(result, requeue.is_some());
    }

    /// Settle with the broker without waiting when the broker answers at once (the usual
    /// case for an ack); otherwise return what is left to await.
    pub fn start(mut self) -> Option<SettleLater> {
        let (obligation, requeue) = self.take()?;
        let mut settling = match requeue {
            None => obligation.ack().boxed(),
            Some(delay) => obligation.nack(nack(delay)).boxed(),
        };
        match (&mut settling).now_or_never() {
            Some(result) => {
                self.settled(result, requeue.is_some());
                None
            }
            None => Some(
                async move {
                    let result = settling.await;
                    self.settled(result, requeue.is_some());
                }
                .boxed(),
            ),
        }
    }

    fn settled(self, result: mailroom_core::Result<()>, requeued: bool) {
        let counters = &self.input.shared.counters;
        match (result, requeued) {
            (Ok(()), false) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            (Ok(()), true) => {
                counters.requeued.fetch_add(1, Ordering::Relaxed);
            }
            // The broker keeps the message and redelivers it: a duplicate later, not a loss.
            (Err(e), _) => {
                counters.settle_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "settling an input failed; the broker will redeliver it");
            }
        }
        // The slot is given back when the input is dropped, right here unless a branch is
        // still dropping its handle.
    }

    /// Hand to the settler task (for code that cannot await).
    pub fn defer(self, shared: &Shared) {
        // The settler is gone only when the pipeline is being torn down: the input is then
        // dropped unsettled, so that it is redelivered.
        let _ = shared.settle_tx.send(self);
    }
}

fn nack(delay: Option<Duration>) -> Nack {
    match delay {
        Some(d) => Nack::requeue_after(d),
        None => Nack::requeue(),
    }
}

/// The handle a derived item holds on its input.
pub(crate) struct Token {
    input: Option<Arc<Input>>,
}

impl Token {
    /// A token on an input received as `info` on `lane` (its source and partition), settled
    /// through `obligation`; `original` is its message when the pipeline keeps originals. The
    /// input holds one of `shared`'s slots, given back when it is settled or dropped.
    pub fn new(
        obligation: Obligation,
        info: DeliveryInfo,
        lane: u64,
        original: Option<Message>,
        shared: Arc<Shared>,
    ) -> Self {
        let position = info.offset.map(|offset| (lane, offset));
        Token {
            input: Some(Arc::new(Input {
                position,
                held: Mutex::new(Held {
                    obligation: Some(obligation),
                    slot: true,
                    original: original.map(Box::new),
                    info,
                    requeue: None,
                }),
                pending: AtomicUsize::new(1),
                abandoned: AtomicBool::new(false),
                shared,
            })),
        }
    }

    /// Another open branch on the same input.
    pub fn fork(&self) -> Token {
        if let Some(input) = &self.input {
            input.pending.fetch_add(1, Ordering::AcqRel);
        }
        Token {
            input: self.input.clone(),
        }
    }

    /// This branch is finished; the settlement is returned when it was the last one.
    pub fn done(mut self) -> Option<Settlement> {
        let input = self.input.take()?;
        if input.pending.fetch_sub(1, Ordering::AcqRel) != 1
            || input.abandoned.load(Ordering::Acquire)
        {
            return None;
        }
        Some(Settlement { input })
    }

    /// This branch failed in a way the broker should retry: the input is requeued (after
    /// `delay`) once every branch is finished.
    pub fn requeue(self, delay: Option<Duration>) -> Option<Settlement> {
        if let Some(input) = &self.input {
            input.lock().requeue = Some(delay);
        }
        self.done()
    }

    /// Which delivery this token belongs to (an id unique while the token lives) and where that
    /// delivery sits in its source, when the broker gives offsets.
    pub fn identity(&self) -> Option<(usize, Position)> {
        let input = self.input.as_ref()?;
        Some((Arc::as_ptr(input) as usize, input.position?))
    }

    /// The input's original message and where it came from (for dead letters and late data).
    /// `None` once the input is settled, or when the pipeline does not keep originals.
    pub fn original(&self) -> Option<(Message, DeliveryInfo)> {
        let input = self.input.as_ref()?;
        let held = input.lock();
        held.obligation.as_ref()?;
        held.original
            .as_deref()
            .map(|m| (m.clone(), held.info.clone()))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(input) = self.input.take() {
            // An unfinished branch: never ack this input; the broker will redeliver it.
            input.abandoned.store(true, Ordering::Release);
        }
    }
}

/// The tokens an item carries: one for a plain item, many for a batch or a window result.
pub(crate) enum Tokens {
    One(Token),
    Many(Vec<Token>),
}

impl Tokens {
    pub fn fork(&self) -> Tokens {
        match self {
            Tokens::One(t) => Tokens::One(t.fork()),
            Tokens::Many(ts) => Tokens::Many(ts.iter().map(Token::fork).collect()),
        }
    }

    pub fn into_vec(self) -> Vec<Token> {
        match self {
            Tokens::One(t) => vec![t],
            Tokens::Many(ts) => ts,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Tokens::One(_) => 1,
            Tokens::Many(ts) => ts.len(),
        }
    }

    /// Finish every branch, settling in the current task.
    pub async fn done(self) {
        match self {
            Tokens::One(t) => {
                if let Some(s) = t.done() {
                    s.run().await;
                }
            }
            Tokens::Many(ts) => {
                for t in ts {
                    if let Some(s) = t.done() {
                        s.run().await;
                    }
                }
            }
        }
    }

    /// Finish every branch without waiting: settles that the broker does not answer at once
    /// are handed to `later`, to be awaited by the caller's task.
    pub fn done_now(self, mut later: impl FnMut(SettleLater)) {
        let mut finish = |t: Token| {
            if let Some(rest) = t.done().and_then(Settlement::start) {
                later(rest);
            }
        };
        match self {
            Tokens::One(t) => finish(t),
            Tokens::Many(ts) => ts.into_iter().for_each(finish),
        }
    }

    /// Finish every branch from a synchronous context (the settler task acks).
    pub fn done_deferred(self, shared: &Shared) {
        for t in self.into_vec() {
            if let Some(s) = t.done() {
                s.defer(shared);
            }
        }
    }

    /// Finish every branch asking for a requeue of the inputs.
    pub async fn requeue(self, delay: Option<Duration>) {
        for t in self.into_vec() {
            if let Some(s) = t.requeue(delay) {
                s.run().await;
            }
        }
    }
}
