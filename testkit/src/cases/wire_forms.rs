//! Keys and header values that are bytes, and header names that repeat, round-trip through
//! mailroom exactly: what a foreign client may write (a Kafka key that is not UTF-8, an SQS
//! `Binary` attribute) must survive being forwarded by mailroom to any broker.

use bytes::Bytes;
use mailroom_core::{Destination, ErrorKind, HeaderValue, Message, Result};

use super::{cleanup, consumer, fresh_queue, receive};
use crate::{check_failed, ensure, Fixture};

/// Bytes that are not UTF-8 (a lone continuation byte, an overlong NUL, 0xff), with NULs.
const NOT_UTF8: &[u8] = b"\x80\x00\xc0\x80\xff\xfe";

fn same(got: &Message, expected: &Message) -> Result<()> {
    ensure(got.key_bytes() == expected.key_bytes(), || {
        format!(
            "key {:?} != sent {:?}",
            got.key_bytes(),
            expected.key_bytes()
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
    })
}

pub(super) async fn binary_keys_and_header_values_round_trip(fixture: Fixture) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::builder("binary key and values")
        .key_bytes(NOT_UTF8)
        .header("text", "plain")
        .header_value("bytes", Bytes::from_static(NOT_UTF8))
        .header_value("bytes-utf8-looking", Bytes::from_static(b"\xc3\xa9"))
        .header_value("bytes-empty", Bytes::new())
        .build()?;
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&fixture, &q).await?;
    let d = receive(&mut c, "the message with a binary key").await?;
    let got = d.message().clone();
    d.ack().await?;
    // A broker without types for values (Kafka) returns UTF-8 bytes as text: the same bytes,
    // a different form. Every other part must be equal.
    let mut expected = sent.clone();
    let kafka_like = got.headers().get("bytes-utf8-looking") == Some("\u{e9}");
    if kafka_like {
        for (name, value) in sent.headers().values() {
            if let Some(text) = value.as_bytes().and_then(|b| std::str::from_utf8(b).ok()) {
                expected.headers_mut().insert_value(name, text)?;
            }
        }
    }
    same(&got, &expected)?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(match kafka_like {
        true => "UTF-8 bytes values arrive as text (the wire has no types)".into(),
        false => String::new(),
    })
}

pub(super) async fn repeated_header_names_keep_every_value_in_order(
    fixture: Fixture,
) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::builder("repeated")
        .append_header("dup", "first")
        .append_header("other", "x")
        .append_header("dup", Bytes::from_static(NOT_UTF8))
        .append_header("dup", "third")
        .build()?;
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&fixture, &q).await?;
    let d = receive(&mut c, "the message with repeated names").await?;
    let got = d.message().clone();
    d.ack().await?;
    let values: Vec<&HeaderValue> = got.headers().get_all("dup").collect();
    ensure(values.len() == 3, || {
        format!(
            "3 values of 'dup' sent, {} arrived: {values:?}",
            values.len()
        )
    })?;
    same(&got, &sent)?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(String::new())
}

pub(super) async fn repeated_header_names_are_refused_where_unsupported(
    fixture: Fixture,
) -> Result<String> {
    if fixture
        .backend
        .capabilities()
        .supports(mailroom_core::Capability::RepeatedHeaderNames)
    {
        return Ok("supported: covered by repeated_header_names_keep_every_value_in_order".into());
    }
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let sent = Message::builder("repeated")
        .append_header("dup", "1")
        .append_header("dup", "2")
        .build()?;
    let result = producer.send(&Destination::queue(&q), sent.clone()).await;
    cleanup(&fixture, &[&q], &[]).await;
    match result {
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::Encode) => {
            ensure(e.undelivered() == Some(&sent), || {
                format!("the refused message is not returned in the error: {e}")
            })?;
            Ok(String::new())
        }
        Err(e) => Err(check_failed(format!(
            "a repeated name was refused with the wrong kind of error: {e}"
        ))),
        Ok(_) => Err(check_failed(
            "a message repeating a header name was accepted by a backend that does not declare \
             repeated_header_names: one of the values would be lost",
        )),
    }
}
