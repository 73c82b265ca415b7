//! The window stage as a stream: its state, its clocks (event-time watermark or processing
//! time), firing due windows (or the oldest one early when too many inputs are held), the
//! processing-time timer and the probe.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesUnordered, StreamExt};
use futures_util::Stream;
use mailroom_core::{Error, Timestamp};
use tokio::time::{Instant, Sleep};

use super::pane::Pane;
use super::spec::{ms, Time};
use super::{Window, WindowProbe, WindowSpec, Windowed};
use crate::flow::{Item, Meta, Step};
use crate::metrics::add;
use crate::stage::RunningStage;
use crate::token::Tokens;

/// The key a window stage groups by (`None` for items without one).
pub(super) type Key = Option<Arc<str>>;
type FoldFn<A, T> = Box<dyn Fn(&mut A, T) + Send + Sync>;

/// A window stage as it runs: the open panes of every key, what is ready to hand on, and the
/// side work (late inputs, rejected items) settling in the background of the stream.
pub(super) struct WindowOp<T, A> {
    pub(super) upstream: BoxStream<'static, Step<T>>,
    pub(super) done: bool,
    pub(super) spec: WindowSpec,
    pub(super) stage: Arc<RunningStage>,
    pub(super) init: Box<dyn Fn() -> A + Send + Sync>,
    pub(super) fold: FoldFn<A, T>,
    pub(super) merge: FoldFn<A, A>,
    /// Open panes per key.
    pub(super) panes: HashMap<Key, Vec<Pane<A>>>,
    /// Open panes by (end, id), to fire in end order.
    pub(super) index: BTreeMap<(u64, u64), Key>,
    pub(super) next_id: u64,
    /// Input tokens the open panes hold; at `max_held` the oldest window fires early.
    pub(super) held: usize,
    pub(super) max_held: usize,
    /// The largest event time seen (the watermark trails it).
    pub(super) max_seen: Option<u64>,
    /// Results (and the error that stops the stage) waiting to be handed on.
    pub(super) ready: VecDeque<Step<Windowed<A>>>,
    /// Late inputs and rejected items on their way to a side output or the error policy.
    pub(super) side: FuturesUnordered<BoxFuture<'static, Option<Error>>>,
    /// Wakes the stage when the earliest processing-time window is due (ending at `timer_at`).
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    pub(super) timer_at: Option<u64>,
    /// One moment on tokio's clock and in milliseconds since the epoch, to convert between them
    /// (tokio's clock can be paused in tests).
    pub(super) base: (Instant, u64),
    pub(super) probe: WindowProbe,
}

impl<T: Clone, A> WindowOp<T, A> {
    pub(super) fn now_ms(&self) -> u64 {
        self.base.1 + ms(Instant::now().saturating_duration_since(self.base.0))
    }

    fn instant_of(&self, at_ms: u64) -> Instant {
        self.base.0 + Duration::from_millis(at_ms.saturating_sub(self.base.1))
    }

    fn watermark(&self) -> Option<u64> {
        match self.spec.time {
            Time::Event => self
                .max_seen
                .map(|m| m.saturating_sub(self.spec.max_out_of_order)),
            Time::Processing => Some(self.now_ms()),
        }
    }

    /// Whether a window ending at `end` has fired (or must fire now).
    pub(super) fn closed(&self, end: u64) -> bool {
        match (self.spec.time, self.watermark()) {
            (Time::Event, Some(wm)) => end.saturating_add(self.spec.lateness) <= wm,
            (Time::Processing, Some(now)) => end <= now,
            _ => false,
        }
    }

    /// Fire every window that is due; with `all`, every open window (end of input).
    fn fire_due(&mut self, all: bool) {
        while let Some((&(end, id), _)) = self.index.iter().next() {
            if !all && !self.closed(end) {
                break;
            }
            self.fire(end, id, false);
        }
        while self.held >= self.max_held {
            let Some((&(end, id), _)) = self.index.iter().next() else {
                break;
            };
            tracing::debug!(parent: &self.stage.span, held = self.held, "window stage holds too many inputs; firing the oldest window early");
            self.fire(end, id, true);
        }
    }

    fn fire(&mut self, end: u64, id: u64, partial: bool) {
        let Some(key) = self.index.remove(&(end, id)) else {
            return;
        };
        let Some(panes) = self.panes.get_mut(&key) else {
            return;
        };
        let Some(pos) = panes.iter().position(|p| p.id == id) else {
            return;
        };
        let pane = panes.swap_remove(pos);
        if panes.is_empty() {
            self.panes.remove(&key);
        }
        self.held = self.held.saturating_sub(pane.tokens.len());
        add(&self.stage.counters.output, 1);
        let result = Windowed {
            key: key.as_deref().map(str::to_owned),
            window: Window {
                start: Timestamp::from_millis(pane.start),
                end: Timestamp::from_millis(pane.end),
            },
            value: pane.acc,
            count: pane.count,
            partial,
        };
        self.ready.push_back(Ok(Item {
            value: result,
            meta: Meta {
                tokens: Tokens::Many(pane.tokens),
                key,
                lane: pane.lane,
                event_time: Some(Timestamp::from_millis(pane.end.saturating_sub(1))),
                // A window's result is made of inputs spread over the window's time, and each
                // input's own trace ended when the window took it: the result starts a trace.
                trace: None,
            },
        }));
    }

    fn update_probe(&self) {
        let mut probe = self.probe.lock();
        probe.open.clear();
        for panes in self.panes.values() {
            for p in panes {
                let key = self.index.get(&(p.end, p.id)).cloned().flatten();
                probe.open.insert(
                    p.id,
                    (
                        key,
                        Window {
                            start: Timestamp::from_millis(p.start),
                            end: Timestamp::from_millis(p.end),
                        },
                        p.count,
                    ),
                );
            }
        }
        probe.watermark = match self.spec.time {
            Time::Event => self.watermark().map(Timestamp::from_millis),
            Time::Processing => None,
        };
        probe.held = self.held;
    }

    /// Arm the processing-time timer for the earliest open window.
    fn arm_timer(&mut self) {
        if self.spec.time != Time::Processing {
            return;
        }
        let next = self.index.keys().next().map(|(end, _)| *end);
        if next != self.timer_at {
            self.timer_at = next;
            self.timer = next.map(|end| Box::pin(tokio::time::sleep_until(self.instant_of(end))));
        }
    }
}

impl<T: Clone, A> Stream for WindowOp<T, A> {
    type Item = Step<Windowed<A>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Side outputs (late data, failed items) settle in the background of this stream.
            while let Poll::Ready(Some(failed)) = this.side.poll_next_unpin(cx) {
                if let Some(e) = failed {
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if let Some(step) = this.ready.pop_front() {
                return Poll::Ready(Some(step));
            }
            if this.done {
                if this.side.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
            match this.upstream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    this.on_item(item);
                    this.fire_due(false);
                    this.arm_timer();
                    this.update_probe();
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    // End of input (shutdown or sources ended): flush every open window.
                    this.done = true;
                    this.fire_due(true);
                    this.update_probe();
                }
                Poll::Pending => {
                    if let Some(timer) = this.timer.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            this.timer_at = None;
                            this.timer = None;
                            this.fire_due(false);
                            this.arm_timer();
                            this.update_probe();
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

// No field is ever pinned structurally (the timer is boxed), so moving the op is sound.
impl<T, A> Unpin for WindowOp<T, A> {}
