//! The pipeline's inputs in flight: the bound on how many are held at once ([`Slots`]) and
//! what every held input shares with the pipeline ([`InFlight`]): its counters, the channel to
//! the settler task and whether originals are kept.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::metrics::PipelineCounters;
use crate::token::SettleJob;

/// What the pipeline shares with every input it holds.
pub(crate) struct InFlight {
    pub counters: Arc<PipelineCounters>,
    pub slots: Arc<Slots>,
    /// Settle jobs finished outside an async context (a filter) go to the settler task. The
    /// channel holds at most `max_in_flight` entries: each is an input that holds a slot.
    pub settle_tx: mpsc::UnboundedSender<SettleJob>,
    /// Whether inputs keep a copy of their original message: only a dead-letter policy or a
    /// late side output reads it, so without one the message moves into the stages uncopied.
    /// Set while the pipeline is built, before any input arrives.
    pub keep_originals: AtomicBool,
}

/// The bound on inputs held at once: a slot is taken when an input is received and given back
/// once it is settled (or released unsettled).
///
/// A counter and a wake-up rather than a semaphore: a slot is taken and given back once per
/// input, and giving it back here is one atomic subtraction (plus a wake-up only when a source
/// waits), where a semaphore locks its waiter list on every release.
pub(crate) struct Slots {
    held: AtomicUsize,
    max: usize,
    /// Tasks waiting in `take`: a slot given back wakes one only when there is one.
    waiters: AtomicUsize,
    freed: Notify,
}

// The per-message methods are `#[inline]`: they are a few atomics, called from the source and
// the settle code in other modules, which may land in other codegen units, where a function
// without it cannot be inlined. They stay as inlinable as when they shared token.rs with the
// settle code.
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
    #[inline]
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

    /// Give back a slot taken by `take` or `try_take`, waking a waiting source if there is one.
    #[inline]
    pub fn give_back(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// Give back `n` slots at once (inputs settled one after another by one task), waking as
    /// many waiting sources as there are.
    #[inline]
    pub fn give_back_many(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            for _ in 0..n {
                self.freed.notify_one();
            }
        }
    }

    /// Slots held right now.
    #[inline]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether every slot is held: no input can be received until one is settled.
    #[inline]
    pub fn all_held(&self) -> bool {
        self.held() >= self.max
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
