//! Sending: what a message carries arrives intact, and close flushes what is in flight.

use super::{
    cleanup, consumer, drain, ensure_all_seen, expect_quiet, fresh_queue, numbered, receive,
};
use crate::{check_failed, ensure, Fixture};
use bytes::Bytes;
use mailroom_core::{Destination, ErrorKind, Message, Result, Timestamp};

pub(super) async fn round_trip(fixture: Fixture) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::builder(Bytes::from_static(b"\x00binary\xff\xfe payload \x01"))
        .header("trace-id", "abc-123")
        .header("unicode", "h\u{e9}llo \u{2713} \u{1f600}")
        .header("empty", "")
        .header("spaces", "  leading and trailing  ")
        .key("customer-7")
        .timestamp(Timestamp::from_millis(1_700_000_000_123))
        .build()?;
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let plain = Message::new("plain");
    producer
        .send(&Destination::queue(&q), plain.clone())
        .await?;
    let mut c = consumer(&fixture, &q).await?;
    // The two messages have different keys, so a partitioned queue may deliver either first.
    let mut pending = vec![sent, plain];
    while !pending.is_empty() {
        let d = receive(&mut c, "a message just sent").await?;
        let got = d.message().clone();
        let Some(at) = pending.iter().position(|m| m.id() == got.id()) else {
            return Err(check_failed(format!("unexpected message {got:?}")));
        };
        let expected = pending.remove(at);
        ensure(got.payload() == expected.payload(), || {
            format!(
                "payload {:?} != sent {:?}",
                got.payload(),
                expected.payload()
            )
        })?;
        ensure(got.headers() == expected.headers(), || {
            format!(
                "headers {:?} != sent {:?}",
                got.headers(),
                expected.headers()
            )
        })?;
        ensure(got == expected, || {
            format!("received {got:?}, sent {expected:?}")
        })?;
        ensure(!d.info().redelivered, || {
            "first delivery marked redelivered".into()
        })?;
        ensure(d.info().attempt == 1, || {
            format!("first delivery has attempt {}", d.info().attempt)
        })?;
        d.ack().await?;
    }
    expect_quiet(&mut c, "both messages were acked").await?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(String::new())
}

pub(super) async fn close_flushes_in_flight(fixture: Fixture) -> Result<String> {
    const N: usize = 1_000;
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = numbered(N, "flush")?;
    let dest = Destination::queue(&q);
    let mut pending = Vec::new();
    for m in &sent {
        pending.push(producer.enqueue(&dest, m.clone()).await?);
    }
    // Close before looking at a single confirm: it must wait for all of them itself.
    producer.close().await?;
    drop(pending);
    let after = producer.send(&dest, Message::new("late")).await;
    ensure(
        matches!(&after, Err(e) if e.kind() == ErrorKind::Closed),
        || format!("send after close: expected Closed, got {after:?}"),
    )?;
    let mut c = consumer(&fixture, &q).await?;
    let tally = drain(&mut c, N).await?;
    ensure_all_seen(&tally, &sent, "after close")?;
    expect_quiet(&mut c, "nothing sent after close").await?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(tally.to_string())
}
