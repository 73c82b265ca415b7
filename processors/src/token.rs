//! The settle obligation of one input, carried by everything derived from it.
//!
//! Every item derived from an input delivery carries a [`Token`] on it. A token is finished
//! explicitly (`done`, `requeue`) when its branch is confirmed by a sink, filtered, skipped or
//! dead-lettered; the input is acked when its last token is done. A token that is merely
//! *dropped* (a failed pipeline, a drain timeout, an aborted task) leaves its input unsettled:
//! the delivery is released and the broker redelivers it. So a crash at any point can only
//! cause a duplicate, never a loss.
//!
//! Most inputs never branch, so a token starts out owning its input outright; a fork (a
//! flat_map, a fan-out, a hopping window) moves the input into an [`Input`] that its branches
//! share and count down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::in_flight::InFlight;
use crate::metrics::bump;
use mailroom_core::delivery::Settlement;
use mailroom_core::{DeliveryInfo, Message, Nack, TryAck};

/// Where an input sits in its source: (source lane, offset), for brokers with offsets.
pub(crate) type Position = (u64, i64);

/// What only some inputs need, boxed so that the others stay small: the original message
/// (kept for dead letters and late data), where it came from, and its source position.
struct Extra {
    original: Option<Message>,
    info: DeliveryInfo,
    position: Option<Position>,
}

/// An input with a single branch: the obligation travels with the item itself.
struct Sole {
    /// The obligation to settle the input with its broker. The input holds one of the
    /// pipeline's slots for as long as this is unsettled.
    obligation: Settlement,
    /// Unique among the pipeline's inputs: tells two deliveries of one message apart.
    delivery: u64,
    extra: Option<Box<Extra>>,
    in_flight: Arc<InFlight>,
}

struct Held {
    /// Taken once, by the last branch; the input holds a slot while it is here.
    obligation: Option<Settlement>,
    extra: Option<Box<Extra>>,
    /// Set when a branch asked for the input to be requeued (after this delay).
    requeue: Option<Option<Duration>>,
}

/// An input with several branches (a flat_map, a fan-out, a hopping window): shared by them,
/// settled when the last one is finished.
pub(crate) struct Input {
    held: Mutex<Held>,
    delivery: u64,
    position: Option<Position>,
    pending: AtomicUsize,
    abandoned: AtomicBool,
    in_flight: Arc<InFlight>,
}

impl Input {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Critical sections are single `take`s: a poisoned lock still holds valid state.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An input dropped unsettled: the broker gets it back (redelivers it), and its slot is free.
fn release(obligation: Settlement, in_flight: &InFlight) {
    in_flight.counters.abandoned.fetch_add(1, Ordering::Relaxed);
    drop(obligation);
    in_flight.slots.give_back();
}

impl Drop for Input {
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(obligation) = held.obligation.take() {
            release(obligation, &self.in_flight);
        }
    }
}

/// The settle of one input, ready to run: ack, or nack-requeue when a branch asked for it.
/// Dropped without running, it releases the input unsettled; dropped while its settle is
/// under way (the task awaiting it aborted or dropped on a timeout), it counts the input as
/// released too, and frees its slot.
pub(crate) struct SettleJob {
    obligation: Option<Settlement>,
    requeue: Option<Option<Duration>>,
    in_flight: Arc<InFlight>,
    /// The obligation has moved into the ack (or nack) under way: dropped now, the settle was
    /// cancelled midway and its outcome is unknown.
    settling: bool,
}

impl SettleJob {
    fn new(
        obligation: Settlement,
        requeue: Option<Option<Duration>>,
        in_flight: Arc<InFlight>,
    ) -> Self {
        SettleJob {
            obligation: Some(obligation),
            requeue,
            in_flight,
            settling: false,
        }
    }

    /// Settle with the broker, then free the input's in-flight slot. Only the pipeline's own
    /// task calls this (the settler task calls [`run_in_settler`](SettleJob::run_in_settler)),
    /// so the ack count has one writer each.
    pub fn run(self) -> impl std::future::Future<Output = ()> + Send {
        // The settle's own future, not one wrapped around it: this runs once per message.
        self.settle(false)
    }

    /// Settle now, without a future, where the backend acks at once (the memory broker,
    /// Kafka's offset book): `None` once done. The job comes back when its settle has to wait
    /// (a requeue, or an ack the broker answers later): [`run`](SettleJob::run) it.
    #[inline]
    pub fn try_run(mut self) -> Option<SettleJob> {
        if self.requeue.is_some() {
            return Some(self);
        }
        let obligation = self.obligation.take()?;
        match obligation.try_ack() {
            TryAck::Done(acked) => {
                self.settled(acked, false);
                None
            }
            TryAck::Wait(obligation) => {
                self.obligation = Some(obligation);
                Some(self)
            }
        }
    }

    /// [`run`](SettleJob::run), from the settler task.
    pub async fn run_in_settler(self) {
        self.settle(true).await;
    }

    async fn settle(mut self, in_settler: bool) {
        let Some(obligation) = self.obligation.take() else {
            return;
        };
        self.settling = true;
        let result = match self.requeue {
            None => obligation.ack().await,
            Some(delay) => obligation.nack(nack(delay)).await,
        };
        self.settling = false;
        self.settled(result, in_settler);
    }

    /// Count the settle's outcome and free the input's slot.
    #[inline]
    fn settled(&self, result: mailroom_core::Result<()>, in_settler: bool) {
        let counters = &self.in_flight.counters;
        match (result, self.requeue.is_some()) {
            (Ok(()), false) if in_settler => bump(&counters.acked_by_settler, 1),
            (Ok(()), false) => bump(&counters.acked, 1),
            (Ok(()), true) => {
                counters.requeued.fetch_add(1, Ordering::Relaxed);
            }
            (Err(e), _) => settle_failed(&self.in_flight, e),
        }
        self.in_flight.slots.give_back();
    }

    /// Hand to the settler task (for code that cannot await).
    pub fn defer(self, in_flight: &InFlight) {
        // The settler is gone only when the pipeline is being torn down: the settle job is
        // then dropped, which releases the input unsettled, to be redelivered.
        let _ = in_flight.settle_tx.send(self);
    }
}

impl Drop for SettleJob {
    fn drop(&mut self) {
        if let Some(obligation) = self.obligation.take() {
            release(obligation, &self.in_flight);
        } else if self.settling {
            // Cancelled midway: the broker may or may not have the ack, and redelivers the
            // input if not. Counted as released, so that every input is either acked or
            // released, and its slot is free again.
            self.in_flight
                .counters
                .abandoned
                .fetch_add(1, Ordering::Relaxed);
            self.in_flight.slots.give_back();
        }
    }
}

/// An ack the broker refused: it keeps the message and redelivers it (a duplicate later, not a
/// loss).
#[cold]
fn settle_failed(in_flight: &InFlight, e: mailroom_core::Error) {
    in_flight
        .counters
        .settle_errors
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(error = %e, "settling an input failed; the broker will redeliver it");
}

/// Inputs acked at once, one after another, by the pipeline's own task (a sink going through
/// a batch): their slots and ack count reach the shared counters together, in one atomic
/// subtraction and one store, instead of one of each per input. [`flush`](Tally::flush) before
/// anything that waits, so that a slot is never held back across an await; dropped (the task
/// cancelled between two flushes), it flushes too, so no slot is lost.
pub(crate) struct Tally<'a> {
    in_flight: &'a InFlight,
    acked: u64,
}

impl<'a> Tally<'a> {
    pub fn new(in_flight: &'a InFlight) -> Self {
        Tally {
            in_flight,
            acked: 0,
        }
    }

    /// Count the acks so far and give their slots back (waking a waiting source).
    #[inline]
    pub fn flush(&mut self) {
        if self.acked > 0 {
            bump(&self.in_flight.counters.acked, self.acked);
            self.in_flight.slots.give_back_many(self.acked as usize);
            self.acked = 0;
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn nack(delay: Option<Duration>) -> Nack {
    match delay {
        Some(d) => Nack::requeue_after(d),
        None => Nack::requeue(),
    }
}

/// The handle a derived item holds on its input.
///
/// Most inputs have exactly one branch from receive to settle, so a token starts out owning
/// the obligation itself: no allocation, no lock, no reference count. Only a fork (a flat_map,
/// a fan-out, a hopping window) moves it into an [`Input`] shared by the branches.
pub(crate) struct Token {
    state: State,
}

enum State {
    Sole(Sole),
    Forked(Arc<Input>),
    /// Finished (or moved out while forking).
    Gone,
}

impl Token {
    /// A token on an input received as `info` on `lane` (its source and partition), the
    /// pipeline's `delivery`-th, settled through `obligation`; `original` is its message when
    /// the pipeline keeps originals. The input holds one of `in_flight`'s slots, given back when
    /// it is settled or released.
    ///
    /// Inlined into the source: called, its arguments (a message among them) are copied into
    /// place once more for every input.
    #[inline(always)]
    pub fn new(
        obligation: Settlement,
        info: DeliveryInfo,
        lane: u64,
        delivery: u64,
        original: Option<Message>,
        in_flight: Arc<InFlight>,
    ) -> Self {
        let position = info.offset.map(|offset| (lane, offset));
        // An `if`, not `bool::then` with a closure: the closure would capture `info` and
        // `original` by move, a copy of both per message even when neither is kept.
        let extra = if original.is_some() || position.is_some() {
            Some(Box::new(Extra {
                original,
                info,
                position,
            }))
        } else {
            None
        };
        Token {
            state: State::Sole(Sole {
                obligation,
                delivery,
                extra,
                in_flight,
            }),
        }
    }

    /// Another open branch on the same input.
    pub fn fork(&mut self) -> Token {
        let input = match std::mem::replace(&mut self.state, State::Gone) {
            State::Sole(sole) => {
                let position = sole.extra.as_ref().and_then(|e| e.position);
                Arc::new(Input {
                    held: Mutex::new(Held {
                        obligation: Some(sole.obligation),
                        extra: sole.extra,
                        requeue: None,
                    }),
                    delivery: sole.delivery,
                    position,
                    pending: AtomicUsize::new(1),
                    abandoned: AtomicBool::new(false),
                    in_flight: sole.in_flight,
                })
            }
            State::Forked(input) => input,
            State::Gone => return Token { state: State::Gone },
        };
        input.pending.fetch_add(1, Ordering::AcqRel);
        self.state = State::Forked(input.clone());
        Token {
            state: State::Forked(input),
        }
    }

    /// This branch is finished; the input's settle job is returned when it was the last one.
    pub fn done(mut self) -> Option<SettleJob> {
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Sole(sole) => Some(SettleJob::new(sole.obligation, None, sole.in_flight)),
            State::Forked(mut input) => {
                if input.pending.fetch_sub(1, Ordering::AcqRel) != 1
                    || input.abandoned.load(Ordering::Acquire)
                {
                    return None;
                }
                // The last branch usually holds the only handle left, so no lock is needed;
                // one still being dropped elsewhere means a short lock.
                let (obligation, requeue) = match Arc::get_mut(&mut input) {
                    Some(i) => {
                        let held = i.held.get_mut().unwrap_or_else(|p| p.into_inner());
                        (held.obligation.take(), held.requeue)
                    }
                    None => {
                        let mut held = input.lock();
                        (held.obligation.take(), held.requeue)
                    }
                };
                Some(SettleJob::new(
                    obligation?,
                    requeue,
                    input.in_flight.clone(),
                ))
            }
            State::Gone => None,
        }
    }

    /// [`done`](Token::done), settling at once where it can: the last branch of an input whose
    /// backend acks without waiting is acked here, counted in `tally` (its slot given back at
    /// the tally's next flush). `Some` is a settle that has to wait: flush, then run it.
    ///
    /// The usual single-branch input goes straight from its obligation to the ack, without a
    /// settle job in between: this runs once per message.
    #[inline(always)]
    pub fn done_now(mut self, tally: &mut Tally<'_>) -> Option<SettleJob> {
        let state = std::mem::replace(&mut self.state, State::Gone);
        // What is left is `Gone`, which `Drop` has nothing to do for: skipping its call saves
        // a call per message, and leaks nothing.
        std::mem::forget(self);
        match state {
            State::Sole(Sole {
                obligation,
                in_flight,
                ..
            }) => match obligation.try_ack() {
                TryAck::Done(Ok(())) => {
                    tally.acked += 1;
                    None
                }
                TryAck::Done(Err(e)) => {
                    settle_failed(&in_flight, e);
                    in_flight.slots.give_back();
                    None
                }
                TryAck::Wait(obligation) => Some(SettleJob::new(obligation, None, in_flight)),
            },
            state => Token { state }.done()?.try_run(),
        }
    }

    /// This branch failed in a way the broker should retry: the input is requeued (after
    /// `delay`) once every branch is finished.
    pub fn requeue(self, delay: Option<Duration>) -> Option<SettleJob> {
        match &self.state {
            State::Sole(_) => self.done().map(|mut s| {
                s.requeue = Some(delay);
                s
            }),
            State::Forked(input) => {
                input.lock().requeue = Some(delay);
                self.done()
            }
            State::Gone => None,
        }
    }

    /// Which delivery this token belongs to (unique within the pipeline) and where that
    /// delivery sits in its source, when the broker gives offsets.
    pub fn identity(&self) -> Option<(u64, Position)> {
        match &self.state {
            State::Sole(sole) => Some((sole.delivery, sole.extra.as_ref()?.position?)),
            State::Forked(input) => Some((input.delivery, input.position?)),
            State::Gone => None,
        }
    }

    /// The input's original message and where it came from (for dead letters and late data).
    /// `None` once the input is settled, or when the pipeline does not keep originals.
    pub fn original(&self) -> Option<(Message, DeliveryInfo)> {
        let from = |extra: &Extra| extra.original.clone().map(|m| (m, extra.info.clone()));
        match &self.state {
            State::Sole(sole) => from(sole.extra.as_deref()?),
            State::Forked(input) => {
                let held = input.lock();
                held.obligation.as_ref()?;
                from(held.extra.as_deref()?)
            }
            State::Gone => None,
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Gone) {
            // An unfinished branch: never ack this input; the broker will redeliver it.
            State::Sole(sole) => release(sole.obligation, &sole.in_flight),
            State::Forked(input) => input.abandoned.store(true, Ordering::Release),
            State::Gone => {}
        }
    }
}

/// The tokens an item carries: one for a plain item, many for a batch or a window result.
pub(crate) enum Tokens {
    One(Token),
    Many(Vec<Token>),
}

impl Tokens {
    pub fn fork(&mut self) -> Tokens {
        match self {
            Tokens::One(t) => Tokens::One(t.fork()),
            Tokens::Many(ts) => Tokens::Many(ts.iter_mut().map(Token::fork).collect()),
        }
    }

    pub fn into_vec(self) -> Vec<Token> {
        match self {
            Tokens::One(t) => vec![t],
            Tokens::Many(ts) => ts,
        }
    }

    /// The usual single input without a future: its settle job when this was its last
    /// branch. `Err` hands back several tokens, to finish with [`done`](Tokens::done).
    #[inline(always)]
    pub fn single(self) -> Result<Option<SettleJob>, Tokens> {
        match self {
            Tokens::One(token) => Ok(token.done()),
            many => Err(many),
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

    /// Finish every branch from a synchronous context (the settler task acks).
    pub fn done_deferred(self, in_flight: &InFlight) {
        for t in self.into_vec() {
            if let Some(s) = t.done() {
                s.defer(in_flight);
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
