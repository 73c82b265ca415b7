//! The scenario's consumer: it acks everything, and opens a new consumer when the broker lost
//! the queue under the old one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{Backend, Consumer, ConsumerOptions, ErrorKind, Result};

use super::progress::{lock, Progress};
use super::{Failure, RETRY};
use crate::Waypoints;

/// The consumer: acks everything until every required message arrived (or `deadline`). A
/// failed receive is recorded and retried; one that says the queue or the consumer is gone
/// (a broker that kept nothing) opens a new consumer, as an application would.
pub(super) async fn consume(
    backend: Arc<dyn Backend>,
    queue: String,
    progress: Arc<Progress>,
    waypoints: Waypoints,
    deadline: Instant,
) -> Result<usize> {
    waypoints.at("consumer", "opening");
    let mut c = backend.consumer(&queue, ConsumerOptions::default()).await?;
    let mut failed_acks = 0usize;
    let mut checked = Instant::now();
    while Instant::now() < deadline {
        if checked.elapsed() > Duration::from_millis(250) {
            checked = Instant::now();
            if progress.all_required_received() {
                break;
            }
        }
        waypoints.at("consumer", "receive_timeout");
        let at = Instant::now();
        match c.receive_timeout(Duration::from_secs(1)).await {
            Ok(Some(d)) => {
                lock(&progress.tally).record(d.message().id());
                waypoints.at("consumer", format!("ack of {}", d.message().id()));
                if d.ack().await.is_err() {
                    failed_acks += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let gone = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Closed);
                lock(&progress.failures).push(Failure::of("receive", &e, at.elapsed()));
                tokio::time::sleep(RETRY).await;
                if gone {
                    waypoints.at("consumer", "opening a new consumer");
                    c = reopen(&backend, &queue, c, &progress, deadline).await?;
                }
            }
        }
    }
    waypoints.at("consumer", "close");
    c.close().await?;
    waypoints.at("consumer", "done");
    Ok(failed_acks)
}

async fn reopen(
    backend: &Arc<dyn Backend>,
    queue: &str,
    mut old: Box<dyn Consumer>,
    progress: &Progress,
    deadline: Instant,
) -> Result<Box<dyn Consumer>> {
    // The old consumer is finished; its close may fail like its receive did.
    let _ = tokio::time::timeout(Duration::from_secs(10), old.close()).await;
    loop {
        let at = Instant::now();
        match backend.consumer(queue, ConsumerOptions::default()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                lock(&progress.failures).push(Failure::of("open consumer", &e, at.elapsed()));
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}
