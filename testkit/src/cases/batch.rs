//! Batches: a large send_batch, and enqueue_batch's one result per message in order.

use super::{
    cleanup, consumer, drain, ensure_all_seen, expect_quiet, fresh_queue, numbered, receive,
};
use crate::{check_failed, ensure, Fixture, Tally};
use mailroom_core::{Destination, ErrorKind, Message, Result};

pub(super) async fn batch_of_10000(fixture: Fixture) -> Result<String> {
    const N: usize = 10_000;
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = numbered(N, "batch")?;
    let results = producer
        .send_batch(&Destination::queue(&q), sent.clone())
        .await?;
    ensure(results.len() == N, || {
        format!("send_batch returned {} results for {N}", results.len())
    })?;
    if let Some((i, Err(e))) = results.iter().enumerate().find(|(_, r)| r.is_err()) {
        return Err(check_failed(format!("batch entry {i} failed: {e}")));
    }
    let mut c = consumer(&fixture, &q).await?;
    let tally = drain(&mut c, N).await?;
    ensure_all_seen(&tally, &sent, "batch")?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(tally.to_string())
}

pub(super) async fn enqueue_batch_keeps_order(fixture: Fixture) -> Result<String> {
    const BATCHES: usize = 4;
    const PER_BATCH: usize = 50;
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let dest = Destination::queue(&q);
    // One key, so a backend that keeps per-key order must deliver the whole run in order.
    let sent = (0..BATCHES * PER_BATCH)
        .map(|i| {
            Message::builder(format!("batched-{i}"))
                .key("one-key")
                .header("seq", i.to_string())
                .build()
        })
        .collect::<Result<Vec<_>>>()?;
    // Where the backend has a size limit, a message over it sits in the middle of the first
    // batch: it must come back refused, with the message, and the ones after it still go.
    let max_size = fixture.backend.capabilities().max_message_size;
    let oversize = max_size.map(|max| Message::new(vec![b'x'; max + 1]));
    let mut messages = Vec::with_capacity(PER_BATCH + 1);
    let mut pending = Vec::new();
    let mut refused = 0;
    for (b, chunk) in sent.chunks(PER_BATCH).enumerate() {
        messages.extend_from_slice(&chunk[..PER_BATCH / 2]);
        let oversize_at = (b == 0)
            .then_some(messages.len())
            .filter(|_| oversize.is_some());
        if let (Some(_), Some(big)) = (oversize_at, &oversize) {
            messages.push(big.clone());
        }
        messages.extend_from_slice(&chunk[PER_BATCH / 2..]);
        let expected = messages.len();
        producer
            .enqueue_batch(&dest, &mut messages, &mut pending)
            .await;
        ensure(messages.is_empty(), || {
            format!(
                "enqueue_batch left {} messages in its input",
                messages.len()
            )
        })?;
        ensure(pending.len() == expected, || {
            format!(
                "enqueue_batch gave {} results for {expected} messages",
                pending.len()
            )
        })?;
        for (i, result) in pending.drain(..).enumerate() {
            match (result, Some(i) == oversize_at) {
                (Ok(confirm), false) => {
                    confirm.await?;
                }
                (Err(e), true) if e.kind() == ErrorKind::PayloadTooLarge => {
                    let returned = e.undelivered().map(Message::id);
                    ensure(returned == oversize.as_ref().map(Message::id), || {
                        "the refused message did not come back in its error".into()
                    })?;
                    refused += 1;
                }
                (other, big) => {
                    return Err(check_failed(format!(
                        "batch {b} entry {i} (oversize: {big}): unexpected {:?}",
                        other.map(drop)
                    )))
                }
            }
        }
    }
    let ordered = fixture.backend.capabilities().per_key_ordering;
    let mut c = consumer(&fixture, &q).await?;
    let mut tally = Tally::new();
    let mut next = 0;
    while tally.unique() < sent.len() {
        let d = receive(&mut c, "the next batched message").await?;
        if tally.record(d.message().id()) && ordered {
            let seq = d
                .message()
                .headers()
                .get("seq")
                .and_then(|s| s.parse().ok());
            ensure(seq == Some(next), || {
                format!("batched messages out of order: got seq {seq:?}, expected {next}")
            })?;
            next += 1;
        }
        d.ack().await?;
    }
    expect_quiet(&mut c, "the refused message must not be queued").await?;
    ensure_all_seen(&tally, &sent, "enqueue_batch")?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!(
        "{tally}, {refused} refused, order {}",
        if ordered { "checked" } else { "not declared" }
    ))
}
