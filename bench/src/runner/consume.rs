//! A consumer task: receives until told to stop, recording end-to-end latency from each
//! message's intended send time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::{ErrorKind, Result};

use super::state::{record, RunState};
use crate::driver::{now_us, Driver, TopicPlan};

pub(super) async fn consume(
    driver: Arc<dyn Driver>,
    topic: TopicPlan,
    subscription: String,
    state: Arc<RunState>,
) -> Result<()> {
    let mut consumer = driver.consumer(&topic, &subscription).await?;
    let e2e = state.e2e.part();
    let mut result = Ok(());
    while !state.stop_consumers.load(Ordering::Acquire) {
        if state.consumers_paused.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // Receives that never wait must still hand the worker back now and then.
        tokio::task::consume_budget().await;
        // A message already waiting is taken without a boxed future.
        let got = match consumer.try_receive() {
            Ok(None) => consumer.receive(Duration::from_millis(100)).await,
            other => other,
        };
        match got {
            Ok(Some(incoming)) => {
                if let Some(intended) = incoming.intended_us {
                    record(&e2e, now_us().saturating_sub(intended));
                    state
                        .newest_received_intended_us
                        .fetch_max(intended, Ordering::Relaxed);
                }
                state.received_total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::Closed => break,
            Err(e) => {
                state.note_error(&e);
                if !e.is_temporary() {
                    result = Err(e);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let closed = consumer.close().await;
    result.and(closed)
}
