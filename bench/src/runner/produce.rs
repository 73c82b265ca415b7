//! A producer task: sends on the open-loop schedule (message `i` intended at `start + i /
//! rate`, kept by a [`Pacer`] to the microsecond), records publish delay and, as confirms
//! arrive apart from the sends, publish latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};

use mailroom_core::Result;

use super::state::{record, RunState};
use super::MAX_CONFIRMS_IN_FLIGHT;
use crate::driver::{now_us, Confirm, Driver, Outgoing, TopicPlan};
use crate::pacer::Pacer;
use crate::workload::{KeyDistributor, Plan};

pub(super) async fn produce(
    driver: Arc<dyn Driver>,
    topic: TopicPlan,
    plan: Arc<Plan>,
    index: usize,
    state: Arc<RunState>,
) -> Result<()> {
    let producer = driver.producer(&topic).await?;
    let publish = state.publish.part();
    let delay = state.delay.part();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Confirm, Instant)>(4096);
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
                Some((r, sent_at)) = in_flight.next(), if !in_flight.is_empty() => match r {
                    Ok(()) => {
                        record(&publish, sent_at.elapsed().as_micros() as u64);
                        confirm_state.sent.fetch_add(1, Ordering::Relaxed);
                        confirm_state.sent_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        confirm_state.note_error(&e);
                        confirm_state.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                else => break,
            }
        }
    });
    let payloads = &plan.payloads;
    let mut epoch = state.epoch.load(Ordering::Acquire);
    let mut pacer = Pacer::new(state.rate());
    let mut i: u64 = 0;
    let mut result = Ok(());
    while !state.stop_producers.load(Ordering::Acquire) {
        let current = state.epoch.load(Ordering::Acquire);
        if current != epoch {
            epoch = current;
            pacer.set_rate(state.rate());
        }
        let intended = pacer.next().await.intended;
        if state.stop_producers.load(Ordering::Acquire) {
            break;
        }
        let key = match plan.workload.key_distributor {
            KeyDistributor::NoKey => None,
            KeyDistributor::KeyRoundRobin => Some(format!("k{}", (i + index as u64) % 10_000)),
            KeyDistributor::RandomNano => Some(format!("k{}", now_us() ^ (i << 20))),
        };
        let payload = payloads[(i as usize) % payloads.len()].clone();
        i += 1;
        let intended_us = now_us().saturating_sub(intended.elapsed().as_micros() as u64);
        let sent_at = Instant::now();
        record(&delay, sent_at.duration_since(intended).as_micros() as u64);
        match producer
            .send(Outgoing {
                key,
                payload,
                intended_us,
            })
            .await
        {
            Ok(confirm) => {
                if tx.send((confirm, sent_at)).await.is_err() {
                    break;
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
    drop(tx);
    let _ = confirms.await;
    let closed = producer.close().await;
    result.and(closed)
}
