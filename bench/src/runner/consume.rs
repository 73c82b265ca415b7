//! A consumer task: receives until told to stop, recording end-to-end latency from each
//! message's intended send time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::{ErrorKind, Result};

use super::state::RunState;
use crate::driver::{now_us, Driver, TopicPlan};

/// Messages a consumer (or a producer, of its sends confirmed at once) counts on its own before
/// it adds them to the run's shared counters: an atomic add and an atomic max per message cost
/// more than the raw channel's own receive. The count is also published whenever the task is
/// about to wait, pause or stop, so the backlog and the drain check lag a busy task by fewer
/// than this many messages and an idle one not at all.
pub(super) const FLUSH_EVERY: u64 = 64;

/// Received messages this consumer has not yet added to the run's shared counters, and the
/// newest intended send time among them.
#[derive(Default)]
struct Tally {
    received: u64,
    newest_intended_us: u64,
}

impl Tally {
    #[inline]
    fn add(&mut self, state: &RunState, intended_us: Option<u64>) {
        self.received += 1;
        if let Some(intended) = intended_us {
            self.newest_intended_us = self.newest_intended_us.max(intended);
        }
        if self.received >= FLUSH_EVERY {
            self.flush(state);
        }
    }

    fn flush(&mut self, state: &RunState) {
        if self.received == 0 {
            return;
        }
        if self.newest_intended_us > 0 {
            state
                .newest_received_intended_us
                .fetch_max(self.newest_intended_us, Ordering::Relaxed);
        }
        state
            .received_total
            .fetch_add(self.received, Ordering::SeqCst);
        state.wake_producers();
        *self = Tally::default();
    }
}

/// Messages handled between two checks of tokio's cooperative budget (consumers and
/// producers). A check per message cost about as much as the channel's receive; one per this
/// many still hands the worker back every `BUDGET_EVERY` × 128 messages (well under a
/// millisecond at the rates where it matters, the timers' granularity).
pub(super) const BUDGET_EVERY: u32 = 8;

pub(super) async fn consume(
    driver: Arc<dyn Driver>,
    topic: TopicPlan,
    subscription: String,
    state: Arc<RunState>,
) -> Result<()> {
    let mut consumer = driver.consumer(&topic, &subscription).await?;
    let e2e = state.e2e.part();
    let mut tally = Tally::default();
    let mut until_budget = 0u32;
    let mut result = Ok(());
    while !state.stop_consumers.load(Ordering::Acquire) {
        if state.consumers_paused.load(Ordering::Acquire) {
            tally.flush(&state);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // Receives that never wait must still hand the worker back now and then.
        if until_budget == 0 {
            until_budget = BUDGET_EVERY;
            tokio::task::consume_budget().await;
        }
        until_budget -= 1;
        // A message already waiting is taken without a boxed future.
        // Assigned over only when it must wait: a `match` returning the result moved all of
        // it (an `Error` is ~90 bytes) for every message.
        let mut got = consumer.try_receive();
        if matches!(got, Ok(None)) {
            // About to wait: what was counted must be visible meanwhile.
            tally.flush(&state);
            got = consumer.receive(Duration::from_millis(100)).await;
        }
        match got {
            Ok(Some(incoming)) => {
                if let Some(intended) = incoming.intended_us {
                    e2e.record(now_us().saturating_sub(intended));
                }
                tally.add(&state, incoming.intended_us);
            }
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::Closed => break,
            Err(e) => {
                state.note_error(&e);
                if !e.is_temporary() {
                    result = Err(e);
                    break;
                }
                tally.flush(&state);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tally.flush(&state);
    let closed = consumer.close().await;
    result.and(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(state: &RunState) -> (u64, u64) {
        (
            state.received_total.load(Ordering::Relaxed),
            state.newest_received_intended_us.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn the_tally_publishes_every_batch_and_the_rest_when_flushed() {
        let state = RunState::new().expect("run state");
        let mut tally = Tally::default();
        for i in 1..FLUSH_EVERY {
            tally.add(&state, Some(i * 10));
        }
        assert_eq!(shared(&state), (0, 0), "held until the batch is full");
        // The batch's last message is not its newest: the max is kept, not the last.
        tally.add(&state, Some(5));
        assert_eq!(shared(&state), (FLUSH_EVERY, (FLUSH_EVERY - 1) * 10));
        tally.add(&state, None);
        tally.add(&state, Some(7));
        assert_eq!(shared(&state), (FLUSH_EVERY, (FLUSH_EVERY - 1) * 10));
        tally.flush(&state);
        assert_eq!(shared(&state), (FLUSH_EVERY + 2, (FLUSH_EVERY - 1) * 10));
        tally.flush(&state);
        assert_eq!(shared(&state), (FLUSH_EVERY + 2, (FLUSH_EVERY - 1) * 10));
    }
}
