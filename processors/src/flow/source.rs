//! One source as a stream of items: a delivery is taken only with a free in-flight slot,
//! becomes an item carrying its settle token, and intake stops on the pipeline's shutdown.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mailroom_core::trace_context::TraceContext;
use mailroom_core::{Consumer, Delivery, Error, ErrorKind, Message};
use tokio::sync::watch;

use super::{Item, Meta, Step, StoppedSources};
use crate::in_flight::{InFlight, Slots};
use crate::metrics::bump;
use crate::token::{Token, Tokens};

struct SourceState {
    consumer: Box<dyn Consumer>,
    index: u64,
    stop: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
    stopped: StoppedSources,
    /// Numbers this source's deliveries, to tell two deliveries of one message apart.
    deliveries: std::cell::Cell<u64>,
}

/// A delivery and how many slots were held once its slot was taken.
type Received = Option<Result<(Delivery, usize), Error>>;

/// One source as a stream, polled inside the pipeline's task.
///
/// The busy path takes a free slot and a ready delivery without awaiting
/// (`Consumer::try_receive`, which loses nothing when none is ready). Only when the source must
/// wait does it box a future that owns the consumer and waits for a slot, a delivery or the
/// stop signal.
pub(crate) struct SourcePoll {
    state: Option<SourceState>,
    slow: Option<BoxFuture<'static, (SourceState, Received)>>,
    done: bool,
}

impl SourcePoll {
    /// The `index`-th source of a pipeline, reading `consumer` until `stop` says so; its
    /// consumer goes to `stopped` when intake ends.
    pub(super) fn new(
        consumer: Box<dyn Consumer>,
        index: u64,
        stop: watch::Receiver<bool>,
        in_flight: Arc<InFlight>,
        stopped: StoppedSources,
    ) -> Self {
        SourcePoll {
            state: Some(SourceState {
                consumer,
                index,
                stop,
                in_flight,
                stopped,
                deliveries: std::cell::Cell::new(0),
            }),
            slow: None,
            done: false,
        }
    }
}

impl futures_util::Stream for SourcePoll {
    type Item = Step<Message>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Step<Message>>> {
        use std::task::Poll;
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(slow) = self.slow.as_mut() {
                let (state, received) = match slow.as_mut().poll(cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => return Poll::Pending,
                };
                self.slow = None;
                let item = match received {
                    None => {
                        self.done = true;
                        state.park();
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => {
                        self.done = true;
                        Err(e)
                    }
                    Some(Ok((delivery, held))) => Ok(state.item(delivery, held)),
                };
                self.state = Some(state);
                return Poll::Ready(Some(item));
            }
            let Some(state) = self.state.as_mut() else {
                self.done = true;
                continue;
            };
            // Only `true` is ever sent, so an unchanged value means "not stopping": a version
            // check is one atomic load, where `borrow` takes the channel's read lock.
            let stopping = state.stop.has_changed().unwrap_or(false) && *state.stop.borrow();
            if !stopping {
                if let Some(held) = state.in_flight.slots.try_take() {
                    match state.consumer.try_receive() {
                        Some(Ok(delivery)) => {
                            return Poll::Ready(Some(Ok(state.item(delivery, held))));
                        }
                        // Errors and waiting both go the slow way, which knows what to do.
                        _ => state.in_flight.slots.give_back(),
                    }
                }
            }
            if let Some(state) = self.state.take() {
                self.slow = Some(Box::pin(wait_for_delivery(state)));
            }
        }
    }
}

impl SourceState {
    /// Intake is over: the consumer waits, open, for the end of the drain.
    fn park(self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        stopped.push(self.consumer);
    }

    /// The item of a delivery that took a slot, `held` slots being taken then.
    #[inline(always)]
    fn item(&self, delivery: Delivery, held: usize) -> Item<Message> {
        let counters = &self.in_flight.counters;
        bump(&counters.received, 1);
        let held = held as u64;
        // A plain read first: the peak rarely moves, and a read is cheaper than a fetch_max.
        if held > counters.in_flight_peak.load(AtomicOrdering::Relaxed) {
            counters
                .in_flight_peak
                .fetch_max(held, AtomicOrdering::Relaxed);
        }
        let (mut value, info, obligation) = delivery.into_parts();
        // The key is shared with the message (one `Arc`), not copied. A message without one
        // stays where it is: an `if` yielding the message on both branches copies it whole.
        let key = if value.key().is_some() {
            let parts = value.into_parts();
            let key = parts.key.clone();
            value = Message::from_parts(parts);
            key
        } else {
            None
        };
        let event_time = value.timestamp();
        let trace = TraceContext::extract(value.headers()).map(Box::new);
        let lane = (self.index << 32) ^ info.partition.map_or(0, |p| u64::from(p as u32));
        let original = self
            .in_flight
            .keep_originals
            .load(AtomicOrdering::Relaxed)
            .then(|| value.clone());
        let delivery = self.deliveries.get();
        self.deliveries.set(delivery + 1);
        let token = Token::new(
            obligation,
            info,
            lane,
            delivery,
            original,
            self.in_flight.clone(),
        );
        Item {
            value,
            meta: Meta {
                tokens: Tokens::One(token),
                key,
                lane,
                event_time,
                trace,
            },
        }
    }
}

/// Wait for a free slot and a delivery, or the stop signal (which ends intake; the consumer
/// is closed after the drain).
async fn wait_for_delivery(mut s: SourceState) -> (SourceState, Received) {
    let in_flight = s.in_flight.clone();
    let mut failures = 0u32;
    loop {
        if *s.stop.borrow() {
            return (s, None);
        }
        let held = tokio::select! {
            biased;
            held = in_flight.slots.take() => held,
            _ = s.stop.wait_for(|stop| *stop) => continue,
        };
        // Gives the slot back on every way out but a delivery, including this future being
        // dropped while it waits.
        let slot = SlotGuard(Some(&in_flight.slots));
        let received = tokio::select! {
            biased;
            received = s.consumer.receive() => received,
            _ = s.stop.wait_for(|stop| *stop) => continue,
        };
        match received {
            Ok(d) => {
                slot.keep();
                return (s, Some(Ok((d, held))));
            }
            Err(e) if e.kind() == ErrorKind::Closed => return (s, None),
            Err(e) if e.is_temporary() && failures < 10 => {
                failures += 1;
                tracing::warn!(error = %e, failures, "source receive failed; retrying");
                drop(slot);
                tokio::time::sleep(Duration::from_millis(50 << failures.min(6))).await;
            }
            Err(e) => return (s, Some(Err(e))),
        }
    }
}

/// A slot taken for a delivery that has not arrived yet.
struct SlotGuard<'a>(Option<&'a Slots>);

impl SlotGuard<'_> {
    /// The delivery arrived: its input holds the slot from now on.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(slots) = self.0.take() {
            slots.give_back();
        }
    }
}
