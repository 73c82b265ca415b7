//! Settling: requeue counts attempts, a dropped consumer's deliveries come back, failures requeue.

use super::{
    cleanup, consumer, ensure_all_seen, expect_quiet, fresh_queue, numbered, receive, send_all,
};
use crate::{check_failed, ensure, Fixture, Tally};
use mailroom_core::{Destination, Message, MessageId, Nack, Result};
use std::collections::HashSet;

pub(super) async fn nack_requeue_counts_attempts(fixture: Fixture) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::new("retry me");
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&fixture, &q).await?;
    let first = receive(&mut c, "the first delivery").await?;
    ensure(first.attempt() == 1 && !first.info().redelivered, || {
        format!("first delivery: {:?}", first.info())
    })?;
    first.nack(Nack::requeue()).await?;
    let second = receive(&mut c, "the redelivery after nack").await?;
    ensure(second.message().id() == sent.id(), || {
        "a different message came back".into()
    })?;
    ensure(second.attempt() == 2, || {
        format!("redelivery has attempt {}, expected 2", second.attempt())
    })?;
    ensure(second.info().redelivered, || {
        "redelivery not marked redelivered".into()
    })?;
    ensure(second.message() == &sent, || {
        "message changed on redelivery".into()
    })?;
    second.ack().await?;
    expect_quiet(&mut c, "the message was acked").await?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(String::new())
}

pub(super) async fn dropped_consumer_redelivers(fixture: Fixture) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = numbered(5, "dropped")?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    {
        let mut c = consumer(&fixture, &q).await?;
        let mut held = Vec::new();
        for i in 0..sent.len() {
            held.push(receive(&mut c, &format!("message {i} before the drop")).await?);
        }
        // The deliveries and the consumer go away unsettled, as in a crash of the handler.
        drop(held);
        drop(c);
    }
    let mut c = consumer(&fixture, &q).await?;
    let mut tally = Tally::new();
    let mut redelivered = 0;
    while tally.unique() < sent.len() {
        let d = receive(&mut c, "a redelivery after the drop").await?;
        if d.info().redelivered {
            redelivered += 1;
        }
        tally.record(d.message().id());
        d.ack().await?;
    }
    ensure_all_seen(&tally, &sent, "after the drop")?;
    ensure(redelivered == sent.len(), || {
        format!("{redelivered} of {} marked redelivered", sent.len())
    })?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(tally.to_string())
}

pub(super) async fn processing_continues_after_errors(fixture: Fixture) -> Result<String> {
    const N: usize = 50;
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = numbered(N, "errors")?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    let mut c = consumer(&fixture, &q).await?;
    let mut failed_once: HashSet<MessageId> = HashSet::new();
    let mut processed = Tally::new();
    while processed.unique() < N {
        let d = receive(&mut c, "the next message").await?;
        let seq: usize = d
            .message()
            .headers()
            .get("seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| check_failed("seq header lost"))?;
        // Every fifth message fails the first time it is handled.
        if seq % 5 == 0 && failed_once.insert(d.message().id().clone()) {
            d.nack(Nack::requeue()).await?;
        } else {
            processed.record(d.message().id());
            d.ack().await?;
        }
    }
    ensure_all_seen(&processed, &sent, "after handler errors")?;
    ensure(failed_once.len() == N / 5, || {
        format!(
            "{} failures injected, expected {}",
            failed_once.len(),
            N / 5
        )
    })?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!(
        "{} failures retried, {processed}",
        failed_once.len()
    ))
}
