//! When a message may arrive: delayed delivery and requeue, and expiry by TTL.

use super::{cleanup, consumer, expect_quiet, fresh_queue, queue, receive};
use crate::{ensure, Fixture};
use mailroom_core::{Destination, Message, Nack, QueueSpec, Result};
use std::time::{Duration, Instant};

pub(super) async fn delayed_delivery(fixture: Fixture) -> Result<String> {
    const DELAY: Duration = Duration::from_millis(1500);
    const REQUEUE_DELAY: Duration = Duration::from_millis(1000);
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let mut c = consumer(&fixture, &q).await?;
    let start = Instant::now();
    let delayed = Message::builder("later").delay(DELAY).build()?;
    producer
        .send(&Destination::queue(&q), delayed.clone())
        .await?;
    let now = Message::new("now");
    producer.send(&Destination::queue(&q), now.clone()).await?;
    let first = receive(&mut c, "the undelayed message").await?;
    ensure(first.message().id() == now.id(), || {
        "the delayed message overtook its delay".into()
    })?;
    first.ack().await?;
    let second = receive(&mut c, "the delayed message").await?;
    let waited = start.elapsed();
    ensure(second.message().id() == delayed.id(), || {
        "unexpected message".into()
    })?;
    ensure(waited >= DELAY, || {
        format!("delayed by {DELAY:?} but arrived after {waited:?}")
    })?;
    let requeued_at = Instant::now();
    second.nack(Nack::requeue_after(REQUEUE_DELAY)).await?;
    let third = receive(&mut c, "the message requeued with a delay").await?;
    let requeue_wait = requeued_at.elapsed();
    ensure(requeue_wait >= REQUEUE_DELAY, || {
        format!("requeued with {REQUEUE_DELAY:?} but back after {requeue_wait:?}")
    })?;
    third.ack().await?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!(
        "delay {DELAY:?} -> {waited:.2?}; requeue {REQUEUE_DELAY:?} -> {requeue_wait:.2?}"
    ))
}

pub(super) async fn message_ttl_expires(fixture: Fixture) -> Result<String> {
    let dlq = fresh_queue(&fixture, "dlq").await?;
    let q = queue(
        &fixture,
        QueueSpec::new(fixture.name("q"))
            .message_ttl(Duration::from_millis(300))
            .dead_letter_queue(&dlq),
    )
    .await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::new("short-lived");
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut c = consumer(&fixture, &q).await?;
    expect_quiet(&mut c, "the message outlived its TTL").await?;
    let mut dc = consumer(&fixture, &dlq).await?;
    let dead = receive(&mut dc, "the expired message in the dead-letter queue").await?;
    ensure(dead.message().id() == sent.id(), || {
        "a different message was dead-lettered".into()
    })?;
    dead.ack().await?;
    c.close().await?;
    dc.close().await?;
    cleanup(&fixture, &[&q, &dlq], &[]).await;
    Ok(String::new())
}
