//! Limits: a bounded queue refuses, an oversize message is refused before any I/O.

use super::{cleanup, consumer, drain, expect_quiet, queue};
use crate::{check_failed, ensure, Fixture};
use mailroom_core::{Destination, ErrorKind, Message, Overflow, QueueSpec, Result};

pub(super) async fn bounded_queue_rejects(fixture: Fixture) -> Result<String> {
    const MAX: u64 = 10;
    let q = queue(
        &fixture,
        QueueSpec::new(fixture.name("q")).max_length(MAX, Overflow::Reject),
    )
    .await?;
    let producer = fixture.backend.producer().await?;
    let dest = Destination::queue(&q);
    for i in 0..MAX {
        producer
            .send(&dest, Message::new(format!("fits {i}")))
            .await?;
    }
    let extra = Message::new("one too many");
    match producer.send(&dest, extra.clone()).await {
        Err(e) if e.kind() == ErrorKind::QueueFull => {
            ensure(e.undelivered().map(Message::id) == Some(extra.id()), || {
                "QueueFull error did not return the message".into()
            })?;
        }
        other => {
            return Err(check_failed(format!(
                "send to a full queue: expected QueueFull, got {other:?}"
            )))
        }
    }
    let mut c = consumer(&fixture, &q).await?;
    let tally = drain(&mut c, MAX as usize).await?;
    expect_quiet(&mut c, "the rejected message must not be queued").await?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(tally.to_string())
}

pub(super) async fn oversize_payload_rejected_before_io(fixture: Fixture) -> Result<String> {
    let max = fixture
        .backend
        .capabilities()
        .max_message_size
        .ok_or_else(|| check_failed("max_message_size vanished"))?;
    // The destination does not exist: only a check made before any I/O can answer
    // PayloadTooLarge rather than NotFound.
    let dest = Destination::queue(fixture.name("never-declared"));
    let producer = fixture.backend.producer().await?;
    let big = Message::new(vec![7u8; max + 1]);
    match producer.send(&dest, big.clone()).await {
        Err(e) if e.kind() == ErrorKind::PayloadTooLarge => {
            ensure(e.undelivered().map(Message::id) == Some(big.id()), || {
                "PayloadTooLarge did not return the message".into()
            })?;
            Ok(format!("limit {max} bytes"))
        }
        other => Err(check_failed(format!(
            "{}-byte payload: expected PayloadTooLarge, got {other:?}",
            max + 1
        ))),
    }
}
