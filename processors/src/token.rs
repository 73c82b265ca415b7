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

use mailroom_core::delivery::Settlement as Obligation;
use mailroom_core::{DeliveryInfo, Message, Nack};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::metrics::PipelineCounters;

/// What the pipeline shares with every input it holds.
pub(crate) struct Shared {
    pub counters: Arc<PipelineCounters>,
    /// Settlements finished outside an async context (a filter) go to the settler task. The
    /// channel holds at most `max_in_flight` entries: each carries its input's permit.
    pub settle_tx: mpsc::UnboundedSender<Settlement>,
    /// Whether inputs keep a copy of their original message: only a dead-letter policy or a
    /// late side output reads it, so without one the message moves into the stages uncopied.
    /// Set while the pipeline is built, before any input arrives.
    pub keep_originals: AtomicBool,
}

struct Held {
    /// The obligation to settle the input with its broker; taken once, by the last branch.
    obligation: Option<Obligation>,
    permit: Option<OwnedSemaphorePermit>,
    /// The input as received, for dead letters and late data (see `Shared::keep_originals`).
    original: Option<Message>,
    info: DeliveryInfo,
}

/// One input delivery and how many branches derived from it are still open.
pub(crate) struct Input {
    held: Mutex<Held>,
    pending: AtomicUsize,
    abandoned: AtomicBool,
    requeue: Mutex<Option<Option<Duration>>>,
    shared: Arc<Shared>,
}

impl Input {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Critical sections are single `take`s: a poisoned lock still holds valid state.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self) -> Option<Settlement> {
        if self.abandoned.load(Ordering::Acquire) {
            return None;
        }
        let mut held = self.lock();
        let obligation = held.obligation.take()?;
        let permit = held.permit.take();
        drop(held);
        let requeue = *self.requeue.lock().unwrap_or_else(|p| p.into_inner());
        Some(Settlement {
            obligation,
            permit,
            requeue,
            counters: self.shared.counters.clone(),
        })
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
    }
}

/// The settle of one input, ready to run: ack, or nack-requeue when a branch asked for it.
pub(crate) struct Settlement {
    obligation: Obligation,
    permit: Option<OwnedSemaphorePermit>,
    requeue: Option<Option<Duration>>,
    counters: Arc<PipelineCounters>,
}

impl Settlement {
    /// Settle with the broker, then free the input's in-flight slot.
    pub async fn run(self) {
        let Settlement {
            obligation,
            permit,
            requeue,
            counters,
        } = self;
        let result = match requeue {
            None => obligation.ack().await,
            Some(delay) => {
                let nack = match delay {
                    Some(d) => Nack::requeue_after(d),
                    None => Nack::requeue(),
                };
                obligation.nack(nack).await
            }
        };
        match (result, requeue) {
            (Ok(()), None) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            (Ok(()), Some(_)) => {
                counters.requeued.fetch_add(1, Ordering::Relaxed);
            }
            // The broker keeps the message and redelivers it: a duplicate later, not a loss.
            (Err(e), _) => {
                counters.settle_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "settling an input failed; the broker will redeliver it");
            }
        }
        drop(permit);
    }

    /// Settle inline when possible, else hand to the settler task.
    pub fn defer(self, shared: &Shared) {
        if let Err(mpsc::error::SendError(settlement)) = shared.settle_tx.send(self) {
            // The settler is gone only when the pipeline is being torn down: leave the input
            // unsettled so that it is redelivered.
            drop(settlement.obligation);
        }
    }
}

/// The handle a derived item holds on its input.
pub(crate) struct Token {
    input: Option<Arc<Input>>,
}

impl Token {
    /// A token on an input received as `info`, settled through `obligation`; `original` is its
    /// message when the pipeline keeps originals.
    pub fn new(
        obligation: Obligation,
        info: DeliveryInfo,
        original: Option<Message>,
        permit: Option<OwnedSemaphorePermit>,
        shared: Arc<Shared>,
    ) -> Self {
        Token {
            input: Some(Arc::new(Input {
                held: Mutex::new(Held {
                    obligation: Some(obligation),
                    permit,
                    original,
                    info,
                }),
                pending: AtomicUsize::new(1),
                abandoned: AtomicBool::new(false),
                requeue: Mutex::new(None),
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
        if input.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            input.finish()
        } else {
            None
        }
    }

    /// This branch failed in a way the broker should retry: the input is requeued (after
    /// `delay`) once every branch is finished.
    pub fn requeue(self, delay: Option<Duration>) -> Option<Settlement> {
        if let Some(input) = &self.input {
            *input.requeue.lock().unwrap_or_else(|p| p.into_inner()) = Some(delay);
        }
        self.done()
    }

    /// The input's original message and where it came from (for dead letters and late data).
    /// `None` once the input is settled, or when the pipeline does not keep originals.
    pub fn original(&self) -> Option<(Message, DeliveryInfo)> {
        let input = self.input.as_ref()?;
        let held = input.lock();
        held.obligation.as_ref()?;
        held.original.clone().map(|m| (m, held.info.clone()))
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
