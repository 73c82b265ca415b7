//! A producer task: sends on the open-loop schedule (message `i` intended at `start + i /
//! rate`, kept by a [`Pacer`] to the microsecond), records publish delay and, as confirms
//! arrive apart from the sends, publish latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::noop_waker_ref;

use mailroom_core::Result;

use super::consume::{BUDGET_EVERY, FLUSH_EVERY};
use super::state::{record, Part, RunState};
use super::MAX_CONFIRMS_IN_FLIGHT;
use crate::driver::{now_ns, now_us, Confirm, Driver, Outgoing, TopicPlan, TrySend};
use crate::pacer::Pacer;
use crate::workload::{KeyDistributor, Plan};

/// Sends between two reads of the backlog in closed loop: the bound is overshot by at most
/// this many per producer (and by the confirms still in flight).
const GATE_CHECK_EVERY: u32 = 16;

pub(super) async fn produce(
    driver: Arc<dyn Driver>,
    topic: TopicPlan,
    plan: Arc<Plan>,
    index: usize,
    state: Arc<RunState>,
) -> Result<()> {
    let producer = driver.producer(&topic).await?;
    let publish = state.publish.part();
    let publish_inline = state.publish.part();
    let delay = state.delay.part();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Confirm, u64)>(4096);
    let confirm_state = state.clone();
    // Confirms are awaited apart from the sends so a slow confirm never holds the schedule up.
    let confirms = tokio::spawn(async move {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                next = rx.recv(), if open && in_flight.len() < MAX_CONFIRMS_IN_FLIGHT => match next {
                    Some((confirm, sent_at)) => in_flight.push(async move {
                        let r: Result<()> = confirm.await;
                        (r, sent_at)
                    }),
                    None => open = false,
                },
                Some((r, sent_at)) = in_flight.next(), if !in_flight.is_empty() => {
                    confirmed(&confirm_state, &publish, r, sent_at, now_ns());
                },
                else => break,
            }
        }
    });
    let payloads = &plan.payloads;
    let mut epoch = state.epoch.load(Ordering::Acquire);
    let mut pacer = Pacer::new(state.rate());
    let mut gate = state.gate();
    let subs = plan.subscriptions as u64;
    let mut until_gate_check = 0u32;
    // Sends begun (`i`), and how many of them `started_total` has been told of.
    let mut i: u64 = 0;
    let mut started_told = 0u64;
    let mut slot = 0;
    // The clock (ns) as read at the end of the last send (an inline confirm), for the next
    // permit. Times stay integers on the `now_ns` line: no `Instant` arithmetic per message.
    let mut last_read: Option<u64> = None;
    // Sends confirmed here and not yet added to `sent_total` (see `FLUSH_EVERY`).
    let mut unpublished = 0u64;
    let mut until_budget = 0u32;
    let mut result = Ok(());
    while !state.stop_producers.load(Ordering::Acquire) {
        // A send that never waits (an in-process broker, try_send) never hands the worker
        // back: without this the producer could hold it for good, timers (the run's own clock)
        // included. Yields once tokio's cooperative budget is spent.
        if until_budget == 0 {
            until_budget = BUDGET_EVERY;
            tokio::task::consume_budget().await;
        }
        until_budget -= 1;
        let current = state.epoch.load(Ordering::Acquire);
        if current != epoch {
            epoch = current;
            pacer.set_rate(state.rate());
            gate = state.gate();
            until_gate_check = 0;
        }
        if let Some(gate) = gate {
            // The backlog is read every few sends, not per send: it is two shared counters
            // the consumers keep writing.
            if until_gate_check == 0 {
                until_gate_check = GATE_CHECK_EVERY;
                publish_sent(&state, &mut unpublished);
                publish_started(&state, i, &mut started_told);
                if state.in_flight(subs) > gate {
                    state.wait_for_room(subs, gate, epoch).await;
                    continue;
                }
            }
            until_gate_check -= 1;
        }
        let permit = match last_read.take().and_then(|now| pacer.due_by(now)) {
            Some(permit) => permit,
            None => {
                // About to wait for the schedule: what was confirmed must count meanwhile.
                publish_sent(&state, &mut unpublished);
                publish_started(&state, i, &mut started_told);
                pacer.next_ns(None).await
            }
        };
        if state.stop_producers.load(Ordering::Acquire) {
            break;
        }
        let key = match plan.workload.key_distributor {
            KeyDistributor::NoKey => None,
            KeyDistributor::KeyRoundRobin => Some(format!("k{}", (i + index as u64) % 10_000)),
            KeyDistributor::RandomNano => Some(format!("k{}", now_us() ^ (i << 20))),
        };
        let payload = payloads.get(slot).cloned().unwrap_or_default();
        slot = if slot + 1 == payloads.len() {
            0
        } else {
            slot + 1
        };
        i += 1;
        let sent_at = permit.at_ns;
        delay.record((sent_at - permit.intended_ns) / 1_000);
        let message = Outgoing {
            key,
            payload,
            intended_us: permit.intended_ns / 1_000,
        };
        // Where the driver can send and confirm at once, no boxed future is made.
        let sent = match producer.try_send(message) {
            TrySend::Confirmed => {
                let now = now_ns();
                confirmed_here(&state, &publish_inline, &mut unpublished, sent_at, now);
                last_read = Some(now);
                continue;
            }
            TrySend::Sent(confirm) => Ok(confirm),
            TrySend::Failed(e) => Err(e),
            TrySend::WouldBlock(message) => {
                // The send may wait for room (a full queue while a backlog is built): the run
                // must see every confirmed send meanwhile, or a backlog target within a batch
                // of the queue's bound would never read as reached.
                publish_sent(&state, &mut unpublished);
                producer.send(message).await
            }
        };
        match sent {
            Ok(mut confirm) => {
                // A confirm that is already there needs no trip through the confirm task.
                match poll_once(&mut confirm) {
                    Poll::Ready(Ok(())) => {
                        let now = now_ns();
                        confirmed_here(&state, &publish_inline, &mut unpublished, sent_at, now);
                        last_read = Some(now);
                    }
                    Poll::Ready(r) => {
                        let now = now_ns();
                        confirmed(&state, &publish_inline, r, sent_at, now);
                        last_read = Some(now);
                    }
                    Poll::Pending => {
                        if tx.send((confirm, sent_at)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                state.note_error(&e);
                state.send_errors.fetch_add(1, Ordering::Relaxed);
                if !e.is_temporary() {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    publish_sent(&state, &mut unpublished);
    publish_started(&state, i, &mut started_told);
    drop(tx);
    let _ = confirms.await;
    let closed = producer.close().await;
    result.and(closed)
}

/// A send confirmed at `now` in the producer task itself: its publish latency recorded, its
/// count kept locally and added to `sent_total` a batch at a time.
#[inline]
fn confirmed_here(state: &RunState, publish: &Part, unpublished: &mut u64, sent_at: u64, now: u64) {
    publish.record(now.saturating_sub(sent_at) / 1_000);
    *unpublished += 1;
    if *unpublished >= FLUSH_EVERY {
        publish_sent(state, unpublished);
    }
}

/// Add the sends confirmed at once and counted locally to the run's `sent_total`.
fn publish_sent(state: &RunState, unpublished: &mut u64) {
    if *unpublished > 0 {
        state
            .sent_total
            .fetch_add(std::mem::take(unpublished), Ordering::Relaxed);
    }
}

/// Add the sends begun since the last call (`begun` in all, `told` of them already added) to
/// the run's `started_total`.
fn publish_started(state: &RunState, begun: u64, told: &mut u64) {
    if begun > *told {
        state
            .started_total
            .fetch_add(begun - *told, Ordering::SeqCst);
        *told = begun;
    }
}

/// Poll a confirm once, without a task to wake: whoever awaits it later polls it again.
fn poll_once(confirm: &mut Confirm) -> Poll<Result<()>> {
    confirm
        .as_mut()
        .poll(&mut Context::from_waker(noop_waker_ref()))
}

/// Count a confirm (or a failed one) that arrived at `now` and record its publish latency
/// (both on the `now_ns` clock).
fn confirmed(state: &RunState, publish: &Part, r: Result<()>, sent_at: u64, now: u64) {
    match r {
        Ok(()) => {
            record(publish, now.saturating_sub(sent_at) / 1_000);
            state.sent_total.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            state.note_error(&e);
            state.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
