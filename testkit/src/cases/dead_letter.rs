//! Dead letters: on nack, and after the maximum delivery attempts.

use super::{cleanup, consumer, expect_quiet, fresh_queue, queue, receive};
use crate::{ensure, Fixture};
use mailroom_core::delivery::DEAD_LETTER_REASON_HEADER;
use mailroom_core::{Destination, Message, Nack, QueueSpec, Result};

pub(super) async fn dead_letter_on_nack(fixture: Fixture) -> Result<String> {
    let dlq = fresh_queue(&fixture, "dlq").await?;
    let q = queue(
        &fixture,
        QueueSpec::new(fixture.name("q")).dead_letter_queue(&dlq),
    )
    .await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::builder("poison").header("h", "v").build()?;
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&fixture, &q).await?;
    let d = receive(&mut c, "the poison message").await?;
    d.nack(Nack::dead_letter("cannot parse order")).await?;
    expect_quiet(&mut c, "the message was dead-lettered").await?;
    let mut dc = consumer(&fixture, &dlq).await?;
    let dead = receive(&mut dc, "the dead-lettered message").await?;
    ensure(
        dead.message().id() == sent.id() && dead.message().payload() == sent.payload(),
        || "a different message reached the dead-letter queue".into(),
    )?;
    ensure(dead.message().headers().get("h") == Some("v"), || {
        "original headers lost on dead-lettering".into()
    })?;
    let reason = dead
        .message()
        .headers()
        .get(DEAD_LETTER_REASON_HEADER)
        .unwrap_or("")
        .to_owned();
    ensure(reason.contains("cannot parse order"), || {
        format!("dead-letter reason header is {reason:?}")
    })?;
    dead.ack().await?;
    c.close().await?;
    dc.close().await?;
    cleanup(&fixture, &[&q, &dlq], &[]).await;
    Ok(String::new())
}

pub(super) async fn dead_letter_after_max_attempts(fixture: Fixture) -> Result<String> {
    const MAX: u32 = 3;
    let dlq = fresh_queue(&fixture, "dlq").await?;
    let q = queue(
        &fixture,
        QueueSpec::new(fixture.name("q"))
            .dead_letter_queue(&dlq)
            .max_delivery_attempts(MAX),
    )
    .await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::new("always fails");
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&fixture, &q).await?;
    for attempt in 1..=MAX {
        let d = receive(&mut c, &format!("attempt {attempt}")).await?;
        d.nack(Nack::requeue()).await?;
    }
    expect_quiet(&mut c, "max attempts reached, so it must be dead-lettered").await?;
    let mut dc = consumer(&fixture, &dlq).await?;
    let dead = receive(&mut dc, "the message dead-lettered after max attempts").await?;
    ensure(dead.message().id() == sent.id(), || {
        "a different message reached the dead-letter queue".into()
    })?;
    dead.ack().await?;
    c.close().await?;
    dc.close().await?;
    cleanup(&fixture, &[&q, &dlq], &[]).await;
    Ok(format!("dead-lettered after {MAX} attempts"))
}
