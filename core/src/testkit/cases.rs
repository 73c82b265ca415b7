//! The cases of the conformance suite.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{check_failed, ensure, Case, Ctx, Tally};
use crate::capabilities::Capability;
use crate::consumer::{Consumer, ConsumerOptions, Replay};
use crate::delivery::{Delivery, Nack, DEAD_LETTER_REASON_HEADER};
use crate::error::{ErrorKind, Result};
use crate::message::{Message, MessageId, Timestamp};
use crate::producer::{Destination, Producer};
use crate::topology::{Binding, ExchangeKind, ExchangeSpec, HeaderMatch, Overflow, QueueSpec};
use crate::transaction::TransactionOptions;

/// How long a case waits for one expected delivery.
const WAIT: Duration = Duration::from_secs(15);
/// How long a case waits to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(500);

macro_rules! case {
    ($name:ident, $checks:expr, [$($req:expr),* $(,)?]) => {
        Case {
            name: stringify!($name),
            checks: $checks,
            requires: &[$($req),*],
            run: |ctx| Box::pin($name(ctx)),
        }
    };
}

pub(super) static ALL: &[Case] = &[
    case!(
        round_trip,
        "payload (binary), headers, key, id and timestamp arrive intact",
        []
    ),
    case!(
        receive_timeout_on_empty_queue,
        "receive_timeout returns None when nothing comes",
        []
    ),
    case!(
        try_receive_never_waits,
        "try_receive: None on an empty queue, the message once it is there, Closed after close",
        []
    ),
    case!(
        missing_queue_is_not_found,
        "consuming a queue that does not exist is NotFound",
        []
    ),
    case!(
        many_consumers_lose_nothing,
        "5,000 messages over 10 concurrent consumers, none lost",
        [Capability::CompetingConsumers]
    ),
    case!(
        competing_consumers_share,
        "two consumers both get work, and each message is processed by exactly one of them",
        [Capability::CompetingConsumers]
    ),
    case!(
        nack_requeue_counts_attempts,
        "a nacked message comes back with attempt + 1",
        [Capability::AttemptCount]
    ),
    case!(
        dropped_consumer_redelivers,
        "unsettled deliveries of a dropped consumer are redelivered",
        [Capability::RedeliveryOnDrop]
    ),
    case!(
        processing_continues_after_errors,
        "handler failures requeue; every message is processed",
        []
    ),
    case!(
        per_key_order,
        "16 keys interleaved: each key arrives in send order",
        [Capability::PerKeyOrdering]
    ),
    case!(
        replay_from_earliest,
        "after every message is acked, a consumer replaying from the earliest position reads them all again",
        [Capability::Replay]
    ),
    case!(
        transaction_commits_or_aborts_as_one,
        "an aborted transaction's outputs are never received and its inputs come back; a committed one's outputs arrive once and its inputs are consumed",
        [Capability::Transactions]
    ),
    case!(
        fanout_reaches_every_queue,
        "every bound queue gets every message",
        [Capability::Exchange(ExchangeKind::Fanout)]
    ),
    case!(
        direct_routing,
        "exact routing keys pick the queues",
        [Capability::Exchange(ExchangeKind::Direct)]
    ),
    case!(
        topic_routing,
        "AMQP patterns (* and #) pick the queues",
        [Capability::Exchange(ExchangeKind::Topic)]
    ),
    case!(
        headers_routing,
        "all / any header matches pick the queues",
        [Capability::Exchange(ExchangeKind::Headers)]
    ),
    case!(
        close_flushes_in_flight,
        "close waits for every enqueued send; later sends are Closed",
        []
    ),
    case!(
        dead_letter_on_nack,
        "nack(dead_letter) moves the message to the DLQ with its reason",
        [Capability::DeadLetter]
    ),
    case!(
        dead_letter_after_max_attempts,
        "after max attempts a requeue dead-letters instead",
        [Capability::DeadLetter, Capability::MaxDeliveryAttempts]
    ),
    case!(
        delayed_delivery,
        "a delayed message and a delayed requeue never arrive early",
        [Capability::DelayedDelivery]
    ),
    case!(
        message_ttl_expires,
        "an expired message goes to the dead-letter queue",
        [Capability::MessageTtl, Capability::DeadLetter]
    ),
    case!(
        bounded_queue_rejects,
        "a full queue with overflow=reject refuses with QueueFull",
        [Capability::MaxQueueLength]
    ),
    case!(
        batch_of_10000,
        "a 10,000-message batch send loses nothing",
        []
    ),
    case!(
        enqueue_batch_keeps_order,
        "enqueue_batch: one result per message, in order; a refused one stops nothing",
        []
    ),
    case!(
        oversize_payload_rejected_before_io,
        "an oversize message is PayloadTooLarge before any I/O, and returned",
        [Capability::MaxMessageSize]
    ),
    case!(
        absent_capability_is_unsupported,
        "every absent capability that has an API is Unsupported before I/O",
        []
    ),
];

// ---------------------------------------------------------------------------------------------
// helpers

async fn queue(ctx: &Ctx, spec: QueueSpec) -> Result<String> {
    ctx.backend.topology().declare_queue(&spec).await?;
    Ok(spec.name)
}

async fn fresh_queue(ctx: &Ctx, what: &str) -> Result<String> {
    queue(ctx, QueueSpec::new(ctx.name(what))).await
}

async fn cleanup(ctx: &Ctx, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        let _ = ctx.backend.topology().delete_queue(q).await;
    }
    for e in exchanges {
        let _ = ctx.backend.topology().delete_exchange(e).await;
    }
}

async fn consumer(ctx: &Ctx, queue: &str) -> Result<Box<dyn Consumer>> {
    ctx.backend
        .consumer(queue, ConsumerOptions::default())
        .await
}

async fn receive(consumer: &mut Box<dyn Consumer>, what: &str) -> Result<Delivery> {
    consumer
        .receive_timeout(WAIT)
        .await?
        .ok_or_else(|| check_failed(format!("no delivery within {WAIT:?}: expected {what}")))
}

async fn expect_quiet(consumer: &mut Box<dyn Consumer>, what: &str) -> Result<()> {
    if let Some(d) = consumer.receive_timeout(QUIET).await? {
        return Err(check_failed(format!(
            "unexpected delivery {} ({what})",
            d.message().id()
        )));
    }
    Ok(())
}

fn numbered(n: usize, prefix: &str) -> Result<Vec<Message>> {
    (0..n)
        .map(|i| {
            Message::builder(format!("{prefix}-{i}"))
                .header("seq", i.to_string())
                .build()
        })
        .collect()
}

/// Enqueue everything (pipelined), then await every confirm.
async fn send_all(producer: &dyn Producer, dest: &Destination, messages: &[Message]) -> Result<()> {
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        pending.push(producer.enqueue(dest, m.clone()).await?);
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}

/// Receive and ack until `expected` distinct messages arrived; duplicates are counted.
async fn drain(consumer: &mut Box<dyn Consumer>, expected: usize) -> Result<Tally> {
    let mut tally = Tally::new();
    while tally.unique() < expected {
        match consumer.receive_timeout(WAIT).await? {
            Some(d) => {
                tally.record(d.message().id());
                d.ack().await?;
            }
            None => {
                return Err(check_failed(format!(
                    "stalled after {tally} of {expected} expected"
                )))
            }
        }
    }
    Ok(tally)
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id().clone()).collect()
}

fn ensure_all_seen(tally: &Tally, sent: &[Message], what: &str) -> Result<()> {
    let missing = tally.missing(ids(sent).iter());
    ensure(missing.is_empty(), || {
        format!("{what}: {} of {} lost ({tally})", missing.len(), sent.len())
    })
}

// ---------------------------------------------------------------------------------------------
// cases

async fn round_trip(ctx: Ctx) -> Result<String> {
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
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
    let mut c = consumer(&ctx, &q).await?;
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
    cleanup(&ctx, &[&q], &[]).await;
    Ok(String::new())
}

async fn receive_timeout_on_empty_queue(ctx: Ctx) -> Result<String> {
    let q = fresh_queue(&ctx, "q").await?;
    let mut c = consumer(&ctx, &q).await?;
    let start = Instant::now();
    let got = c.receive_timeout(Duration::from_millis(300)).await?;
    let waited = start.elapsed();
    ensure(got.is_none(), || {
        "an empty queue delivered something".into()
    })?;
    ensure(waited < Duration::from_secs(5), || {
        format!("receive_timeout(300ms) took {waited:?}")
    })?;
    c.close().await?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(String::new())
}

async fn try_receive_never_waits(ctx: Ctx) -> Result<String> {
    let q = fresh_queue(&ctx, "q").await?;
    let mut c = consumer(&ctx, &q).await?;
    let started = Instant::now();
    let empty = c.try_receive().transpose()?;
    ensure(empty.is_none(), || {
        "try_receive on an empty queue returned a delivery".into()
    })?;
    ensure(started.elapsed() < Duration::from_millis(100), || {
        format!("try_receive on an empty queue took {:?}", started.elapsed())
    })?;
    let sent = Message::new("ready");
    let producer = ctx.backend.producer().await?;
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    // A broker delivers in the background: the message is there once the client has it.
    let deadline = Instant::now() + WAIT;
    let mut polls = 0u32;
    let delivery = loop {
        if let Some(d) = c.try_receive().transpose()? {
            break d;
        }
        polls += 1;
        ensure(Instant::now() < deadline, || {
            format!("try_receive never returned the sent message within {WAIT:?}")
        })?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    ensure(delivery.message().id() == sent.id(), || {
        "try_receive returned a different message".into()
    })?;
    delivery.ack().await?;
    c.close().await?;
    let closed = c.try_receive().transpose();
    ensure(
        matches!(&closed, Err(e) if e.kind() == ErrorKind::Closed),
        || format!("try_receive after close: expected Closed, got {closed:?}"),
    )?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(format!("{polls} empty polls before it arrived"))
}

async fn missing_queue_is_not_found(ctx: Ctx) -> Result<String> {
    let q = ctx.name("never-declared");
    let result = async {
        let mut c = consumer(&ctx, &q).await?;
        c.receive_timeout(Duration::from_secs(2)).await
    }
    .await;
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(check_failed(format!("expected NotFound, got {e}"))),
        Ok(_) => Err(check_failed(format!(
            "consuming undeclared queue '{q}' did not fail"
        ))),
    }
}

async fn many_consumers_lose_nothing(ctx: Ctx) -> Result<String> {
    const N: usize = 5_000;
    const CONSUMERS: usize = 10;
    let q = fresh_queue(&ctx, "q").await?;
    let sent = numbered(N, "many")?;
    let tally = Arc::new(Mutex::new(Tally::new()));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let mut c = consumer(&ctx, &q).await?;
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + WAIT * 4;
            loop {
                if tally.lock().unwrap().unique() >= N || Instant::now() > deadline {
                    break;
                }
                if let Some(d) = c.receive_timeout(Duration::from_millis(200)).await? {
                    tally.lock().unwrap().record(d.message().id());
                    d.ack().await?;
                }
            }
            c.close().await
        }));
    }
    let producer = ctx.backend.producer().await?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    for t in tasks {
        t.await
            .map_err(|e| check_failed(format!("consumer task failed: {e}")))??;
    }
    let tally = tally.lock().unwrap().clone();
    ensure_all_seen(&tally, &sent, "10 consumers")?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(tally.to_string())
}

async fn competing_consumers_share(ctx: Ctx) -> Result<String> {
    const N: usize = 1_000;
    const CONSUMERS: usize = 2;
    // A partitioned queue gives each partition to one member of the group: with fewer
    // partitions than consumers, a consumer idles by design. One partition per consumer, and
    // keyed messages spread over them, so the case shows the sharing the broker can do.
    let partitioned = ctx.backend.capabilities().partitioned_queues;
    let mut spec = QueueSpec::new(ctx.name("q"));
    if partitioned {
        spec = spec.partitions(CONSUMERS as u32);
    }
    let q = queue(&ctx, spec).await?;
    let keyed = |prefix: &str, i: usize| {
        Message::builder(format!("{prefix}-{i}"))
            .key(i.to_string())
            .header("seq", i.to_string())
            .build()
    };
    let sent: Vec<Message> = (0..N).map(|i| keyed("share", i)).collect::<Result<_>>()?;
    let real: HashSet<MessageId> = ids(&sent).into_iter().collect();
    let producer = ctx.backend.producer().await?;
    let total = Arc::new(Mutex::new(Tally::new()));
    // Per consumer: probes seen (the warm-up below), and the real messages it processed.
    let probed: Arc<Vec<Mutex<usize>>> = Arc::new((0..CONSUMERS).map(|_| Mutex::new(0)).collect());
    let real = Arc::new(real);
    let mut tasks = Vec::new();
    for me in 0..CONSUMERS {
        let mut c = consumer(&ctx, &q).await?;
        let (total, probed, real) = (total.clone(), probed.clone(), real.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Tally::new();
            let deadline = Instant::now() + WAIT * 3;
            while total.lock().unwrap().unique() < N && Instant::now() < deadline {
                if let Some(d) = c.receive_timeout(Duration::from_millis(200)).await? {
                    if real.contains(d.message().id()) {
                        mine.record(d.message().id());
                        total.lock().unwrap().record(d.message().id());
                    } else {
                        *probed[me].lock().unwrap() += 1;
                    }
                    d.ack().await?;
                }
            }
            c.close().await?;
            Ok::<_, crate::Error>(mine)
        }));
    }
    // Warm-up: probes, one every 50 ms over every key, until each consumer has had one. A group
    // that is still handing out partitions would otherwise give the whole run to the member that
    // joined first, and a hand-over in the middle of the run redelivers what was in flight.
    let dest = Destination::queue(&q);
    let warm_deadline = Instant::now() + WAIT * 2;
    let mut probes = 0;
    while probed.iter().any(|n| *n.lock().unwrap() == 0) && Instant::now() < warm_deadline {
        producer.send(&dest, keyed("probe", probes)?).await?;
        probes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_all(producer.as_ref(), &dest, &sent).await?;
    let mut per_consumer = Vec::new();
    for t in tasks {
        per_consumer.push(
            t.await
                .map_err(|e| check_failed(format!("consumer task failed: {e}")))??,
        );
    }
    let total = total.lock().unwrap().clone();
    ensure_all_seen(&total, &sent, "two consumers")?;
    ensure(total.duplicates() == 0, || {
        format!(
            "{} messages were processed more than once",
            total.duplicates()
        )
    })?;
    let split: Vec<String> = per_consumer
        .iter()
        .map(|t| t.unique().to_string())
        .collect();
    ensure(per_consumer.iter().all(|t| t.unique() > 0), || {
        format!(
            "one consumer did all the work: split {} after {probes} warm-up probes",
            split.join(" / ")
        )
    })?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(format!(
        "split {}{}",
        split.join(" / "),
        if partitioned {
            format!(" (one partition per consumer, {CONSUMERS} partitions)")
        } else {
            String::new()
        }
    ))
}

async fn transaction_commits_or_aborts_as_one(ctx: Ctx) -> Result<String> {
    const N: usize = 5;
    let input = fresh_queue(&ctx, "in").await?;
    let output = fresh_queue(&ctx, "out").await?;
    let sent = numbered(N, "tx")?;
    let producer = ctx.backend.producer().await?;
    send_all(producer.as_ref(), &Destination::queue(&input), &sent).await?;
    let mut reader = consumer(&ctx, &output).await?;
    let mut unit = ctx
        .backend
        .transactional(&input, TransactionOptions::new(ctx.name("tx")))
        .await?;
    let out = Destination::queue(&output);
    let transform = |m: &Message, phase: &str| {
        Message::builder(m.payload().clone())
            .header("phase", phase)
            .build()
    };

    // Abort: nothing of it may reach the reader, and the same inputs come back.
    let mut first = Tally::new();
    while first.unique() < N {
        let input = unit
            .receive_timeout(WAIT)
            .await?
            .ok_or_else(|| check_failed("no input within the wait, before the abort"))?;
        first.record(input.message.id());
        unit.send(&out, transform(&input.message, "aborted")?)
            .await?;
    }
    // A send may only hand the output to the client's batcher; waiting lets it reach the
    // broker's log, so the abort has written records to hide instead of dropping them unsent.
    tokio::time::sleep(QUIET).await;
    unit.abort().await?;
    expect_quiet(&mut reader, "an aborted transaction's output").await?;

    // Commit: the same inputs again, each output received exactly once.
    let mut again = Tally::new();
    while again.unique() < N {
        let input = unit
            .receive_timeout(WAIT)
            .await?
            .ok_or_else(|| check_failed("the aborted inputs did not come back"))?;
        again.record(input.message.id());
        unit.send(&out, transform(&input.message, "committed")?)
            .await?;
    }
    ensure_all_seen(&again, &sent, "inputs after the abort")?;
    let counts = unit.commit().await?;
    let mut outputs = Tally::new();
    while outputs.unique() < N {
        let d = receive(&mut reader, "a committed transaction's output").await?;
        ensure(
            d.message().headers().get("phase") == Some("committed"),
            || {
                format!(
                    "received an output of the aborted transaction: {}",
                    d.message().id()
                )
            },
        )?;
        outputs.record(d.message().id());
        d.ack().await?;
    }
    expect_quiet(&mut reader, "a second copy of a committed output").await?;
    unit.close().await?;

    // The committed inputs are consumed: a new unit on the same queue gets none of them.
    let mut next = ctx
        .backend
        .transactional(&input, TransactionOptions::new(ctx.name("tx")))
        .await?;
    if let Some(left) = next.receive_timeout(QUIET).await? {
        return Err(check_failed(format!(
            "input {} was received again after its transaction committed",
            left.message.id()
        )));
    }
    next.close().await?;
    reader.close().await?;
    cleanup(&ctx, &[&input, &output], &[]).await;
    Ok(format!(
        "{N} inputs: aborted once (0 outputs seen, inputs back), then committed ({} in, {} out, each output once)",
        counts.inputs, counts.outputs
    ))
}

async fn replay_from_earliest(ctx: Ctx) -> Result<String> {
    const N: usize = 20;
    let q = fresh_queue(&ctx, "q").await?;
    let sent = numbered(N, "replay")?;
    let producer = ctx.backend.producer().await?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    let mut first = consumer(&ctx, &q).await?;
    let mut acked = Tally::new();
    while acked.unique() < N {
        let d = receive(&mut first, "every message, before the replay").await?;
        acked.record(d.message().id());
        d.ack().await?;
    }
    first.close().await?;
    let mut replaying = ctx
        .backend
        .consumer(&q, ConsumerOptions::default().replay(Replay::Earliest))
        .await?;
    let mut again = Tally::new();
    while again.unique() < N {
        let d = receive(&mut replaying, "every acked message again, replayed").await?;
        again.record(d.message().id());
        d.ack().await?;
    }
    replaying.close().await?;
    ensure_all_seen(&again, &sent, "replay from the earliest position")?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(format!(
        "{N} sent and acked, all {N} read again from the earliest position"
    ))
}

async fn nack_requeue_counts_attempts(ctx: Ctx) -> Result<String> {
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
    let sent = Message::new("retry me");
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&ctx, &q).await?;
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
    cleanup(&ctx, &[&q], &[]).await;
    Ok(String::new())
}

async fn dropped_consumer_redelivers(ctx: Ctx) -> Result<String> {
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
    let sent = numbered(5, "dropped")?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    {
        let mut c = consumer(&ctx, &q).await?;
        let mut held = Vec::new();
        for i in 0..sent.len() {
            held.push(receive(&mut c, &format!("message {i} before the drop")).await?);
        }
        // The deliveries and the consumer go away unsettled, as in a crash of the handler.
        drop(held);
        drop(c);
    }
    let mut c = consumer(&ctx, &q).await?;
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
    cleanup(&ctx, &[&q], &[]).await;
    Ok(tally.to_string())
}

async fn processing_continues_after_errors(ctx: Ctx) -> Result<String> {
    const N: usize = 50;
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
    let sent = numbered(N, "errors")?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    let mut c = consumer(&ctx, &q).await?;
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
    cleanup(&ctx, &[&q], &[]).await;
    Ok(format!(
        "{} failures retried, {processed}",
        failed_once.len()
    ))
}

async fn per_key_order(ctx: Ctx) -> Result<String> {
    const KEYS: usize = 16;
    const PER_KEY: usize = 40;
    let q = queue(&ctx, QueueSpec::new(ctx.name("q")).partitions(4)).await?;
    let producer = ctx.backend.producer().await?;
    let mut sent = Vec::new();
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            sent.push(
                Message::builder(format!("k{k}-{i}"))
                    .key(format!("key-{k}"))
                    .header("seq", i.to_string())
                    .build()?,
            );
        }
    }
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    let mut c = consumer(&ctx, &q).await?;
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut tally = Tally::new();
    while tally.unique() < sent.len() {
        let d = receive(&mut c, "the next keyed message").await?;
        let first_time = tally.record(d.message().id());
        let key = d.message().key().unwrap_or_default().to_owned();
        let seq: usize = d
            .message()
            .headers()
            .get("seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| check_failed("seq header lost"))?;
        if first_time {
            let expected = last.get(&key).map_or(0, |s| s + 1);
            ensure(seq == expected, || {
                format!("key {key}: got seq {seq}, expected {expected}")
            })?;
            last.insert(key, seq);
        }
        d.ack().await?;
    }
    c.close().await?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(format!("{KEYS} keys x {PER_KEY}, {tally}"))
}

async fn fanout_reaches_every_queue(ctx: Ctx) -> Result<String> {
    const N: usize = 100;
    let topo = ctx.backend.topology();
    let ex = ctx.name("ex");
    topo.declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Fanout))
        .await?;
    let mut queues = Vec::new();
    for i in 0..3 {
        let q = fresh_queue(&ctx, &format!("q{i}")).await?;
        topo.bind(&Binding::fanout(&ex, &q)).await?;
        queues.push(q);
    }
    let mut consumers = Vec::new();
    for q in &queues {
        consumers.push(consumer(&ctx, q).await?);
    }
    let producer = ctx.backend.producer().await?;
    let sent = numbered(N, "fanout")?;
    send_all(producer.as_ref(), &Destination::exchange(&ex, ""), &sent).await?;
    let mut notes = Vec::new();
    for (q, c) in queues.iter().zip(consumers.iter_mut()) {
        let tally = drain(c, N).await?;
        ensure_all_seen(&tally, &sent, q)?;
        expect_quiet(c, "every message was drained").await?;
        notes.push(tally.to_string());
    }
    let refs: Vec<&str> = queues.iter().map(String::as_str).collect();
    cleanup(&ctx, &refs, &[&ex]).await;
    Ok(format!("3 queues: {}", notes.join("; ")))
}

/// Send one message per routing key (or header set), then check which queues got which.
async fn check_routes(
    ctx: &Ctx,
    ex: &str,
    queues: &[String],
    sends: Vec<(&str, Message)>,
    expect: &[&[usize]],
) -> Result<String> {
    let producer = ctx.backend.producer().await?;
    let mut want: Vec<HashSet<MessageId>> = vec![HashSet::new(); queues.len()];
    for ((routing_key, message), targets) in sends.into_iter().zip(expect) {
        for &t in *targets {
            want[t].insert(message.id().clone());
        }
        producer
            .send(&Destination::exchange(ex, routing_key), message)
            .await?;
    }
    for (i, q) in queues.iter().enumerate() {
        let mut c = consumer(ctx, q).await?;
        let tally = drain(&mut c, want[i].len()).await?;
        let missing = tally.missing(want[i].iter());
        ensure(missing.is_empty(), || {
            format!("queue {q} missed {} messages routed to it", missing.len())
        })?;
        ensure(tally.unique() == want[i].len(), || {
            format!("queue {q} got messages not routed to it")
        })?;
        expect_quiet(&mut c, &format!("queue {q} should hold nothing more")).await?;
        c.close().await?;
    }
    let refs: Vec<&str> = queues.iter().map(String::as_str).collect();
    cleanup(ctx, &refs, &[ex]).await;
    Ok(String::new())
}

async fn declare_exchange_with_queues(
    ctx: &Ctx,
    kind: ExchangeKind,
    n: usize,
) -> Result<(String, Vec<String>)> {
    let ex = ctx.name("ex");
    ctx.backend
        .topology()
        .declare_exchange(&ExchangeSpec::new(&ex, kind))
        .await?;
    let mut queues = Vec::new();
    for i in 0..n {
        queues.push(fresh_queue(ctx, &format!("q{i}")).await?);
    }
    Ok((ex, queues))
}

async fn direct_routing(ctx: Ctx) -> Result<String> {
    let (ex, qs) = declare_exchange_with_queues(&ctx, ExchangeKind::Direct, 3).await?;
    let topo = ctx.backend.topology();
    topo.bind(&Binding::key(&ex, &qs[0], "a")).await?;
    topo.bind(&Binding::key(&ex, &qs[1], "b")).await?;
    topo.bind(&Binding::key(&ex, &qs[2], "a")).await?;
    topo.bind(&Binding::key(&ex, &qs[2], "b")).await?;
    let sends = vec![
        ("a", Message::new("to a")),
        ("b", Message::new("to b")),
        ("a", Message::new("to a again")),
    ];
    check_routes(&ctx, &ex, &qs, sends, &[&[0, 2], &[1, 2], &[0, 2]]).await
}

async fn topic_routing(ctx: Ctx) -> Result<String> {
    let (ex, qs) = declare_exchange_with_queues(&ctx, ExchangeKind::Topic, 4).await?;
    let topo = ctx.backend.topology();
    topo.bind(&Binding::pattern(&ex, &qs[0], "order.*")?)
        .await?;
    topo.bind(&Binding::pattern(&ex, &qs[1], "order.#")?)
        .await?;
    topo.bind(&Binding::pattern(&ex, &qs[2], "#.eu")?).await?;
    topo.bind(&Binding::pattern(&ex, &qs[3], "#")?).await?;
    let sends = vec![
        ("order.created", Message::new("1")),
        ("order.created.eu", Message::new("2")),
        ("invoice.eu", Message::new("3")),
        ("order", Message::new("4")),
    ];
    check_routes(
        &ctx,
        &ex,
        &qs,
        sends,
        &[&[0, 1, 3], &[1, 2, 3], &[2, 3], &[1, 3]],
    )
    .await
}

async fn headers_routing(ctx: Ctx) -> Result<String> {
    let (ex, qs) = declare_exchange_with_queues(&ctx, ExchangeKind::Headers, 2).await?;
    let topo = ctx.backend.topology();
    let want = [("type", "order"), ("region", "eu")];
    topo.bind(&Binding::headers(&ex, &qs[0], HeaderMatch::All, want))
        .await?;
    topo.bind(&Binding::headers(&ex, &qs[1], HeaderMatch::Any, want))
        .await?;
    let m = |t: &str, r: &str| {
        Message::builder(format!("{t}/{r}"))
            .header("type", t)
            .header("region", r)
            .build()
    };
    let sends = vec![
        ("", m("order", "eu")?),
        ("", m("order", "us")?),
        ("", m("invoice", "eu")?),
    ];
    check_routes(&ctx, &ex, &qs, sends, &[&[0, 1], &[1], &[1]]).await
}

async fn close_flushes_in_flight(ctx: Ctx) -> Result<String> {
    const N: usize = 1_000;
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
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
    let mut c = consumer(&ctx, &q).await?;
    let tally = drain(&mut c, N).await?;
    ensure_all_seen(&tally, &sent, "after close")?;
    expect_quiet(&mut c, "nothing sent after close").await?;
    c.close().await?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(tally.to_string())
}

async fn dead_letter_on_nack(ctx: Ctx) -> Result<String> {
    let dlq = fresh_queue(&ctx, "dlq").await?;
    let q = queue(&ctx, QueueSpec::new(ctx.name("q")).dead_letter_queue(&dlq)).await?;
    let producer = ctx.backend.producer().await?;
    let sent = Message::builder("poison").header("h", "v").build()?;
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&ctx, &q).await?;
    let d = receive(&mut c, "the poison message").await?;
    d.nack(Nack::dead_letter("cannot parse order")).await?;
    expect_quiet(&mut c, "the message was dead-lettered").await?;
    let mut dc = consumer(&ctx, &dlq).await?;
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
    cleanup(&ctx, &[&q, &dlq], &[]).await;
    Ok(String::new())
}

async fn dead_letter_after_max_attempts(ctx: Ctx) -> Result<String> {
    const MAX: u32 = 3;
    let dlq = fresh_queue(&ctx, "dlq").await?;
    let q = queue(
        &ctx,
        QueueSpec::new(ctx.name("q"))
            .dead_letter_queue(&dlq)
            .max_delivery_attempts(MAX),
    )
    .await?;
    let producer = ctx.backend.producer().await?;
    let sent = Message::new("always fails");
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    let mut c = consumer(&ctx, &q).await?;
    for attempt in 1..=MAX {
        let d = receive(&mut c, &format!("attempt {attempt}")).await?;
        d.nack(Nack::requeue()).await?;
    }
    expect_quiet(&mut c, "max attempts reached, so it must be dead-lettered").await?;
    let mut dc = consumer(&ctx, &dlq).await?;
    let dead = receive(&mut dc, "the message dead-lettered after max attempts").await?;
    ensure(dead.message().id() == sent.id(), || {
        "a different message reached the dead-letter queue".into()
    })?;
    dead.ack().await?;
    c.close().await?;
    dc.close().await?;
    cleanup(&ctx, &[&q, &dlq], &[]).await;
    Ok(format!("dead-lettered after {MAX} attempts"))
}

async fn delayed_delivery(ctx: Ctx) -> Result<String> {
    const DELAY: Duration = Duration::from_millis(1500);
    const REQUEUE_DELAY: Duration = Duration::from_millis(1000);
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
    let mut c = consumer(&ctx, &q).await?;
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
    cleanup(&ctx, &[&q], &[]).await;
    Ok(format!(
        "delay {DELAY:?} -> {waited:.2?}; requeue {REQUEUE_DELAY:?} -> {requeue_wait:.2?}"
    ))
}

async fn message_ttl_expires(ctx: Ctx) -> Result<String> {
    let dlq = fresh_queue(&ctx, "dlq").await?;
    let q = queue(
        &ctx,
        QueueSpec::new(ctx.name("q"))
            .message_ttl(Duration::from_millis(300))
            .dead_letter_queue(&dlq),
    )
    .await?;
    let producer = ctx.backend.producer().await?;
    let sent = Message::new("short-lived");
    producer.send(&Destination::queue(&q), sent.clone()).await?;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut c = consumer(&ctx, &q).await?;
    expect_quiet(&mut c, "the message outlived its TTL").await?;
    let mut dc = consumer(&ctx, &dlq).await?;
    let dead = receive(&mut dc, "the expired message in the dead-letter queue").await?;
    ensure(dead.message().id() == sent.id(), || {
        "a different message was dead-lettered".into()
    })?;
    dead.ack().await?;
    c.close().await?;
    dc.close().await?;
    cleanup(&ctx, &[&q, &dlq], &[]).await;
    Ok(String::new())
}

async fn bounded_queue_rejects(ctx: Ctx) -> Result<String> {
    const MAX: u64 = 10;
    let q = queue(
        &ctx,
        QueueSpec::new(ctx.name("q")).max_length(MAX, Overflow::Reject),
    )
    .await?;
    let producer = ctx.backend.producer().await?;
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
    let mut c = consumer(&ctx, &q).await?;
    let tally = drain(&mut c, MAX as usize).await?;
    expect_quiet(&mut c, "the rejected message must not be queued").await?;
    c.close().await?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(tally.to_string())
}

async fn batch_of_10000(ctx: Ctx) -> Result<String> {
    const N: usize = 10_000;
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
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
    let mut c = consumer(&ctx, &q).await?;
    let tally = drain(&mut c, N).await?;
    ensure_all_seen(&tally, &sent, "batch")?;
    c.close().await?;
    cleanup(&ctx, &[&q], &[]).await;
    Ok(tally.to_string())
}

async fn enqueue_batch_keeps_order(ctx: Ctx) -> Result<String> {
    const BATCHES: usize = 4;
    const PER_BATCH: usize = 50;
    let q = fresh_queue(&ctx, "q").await?;
    let producer = ctx.backend.producer().await?;
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
    let max_size = ctx.backend.capabilities().max_message_size;
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
    let ordered = ctx.backend.capabilities().per_key_ordering;
    let mut c = consumer(&ctx, &q).await?;
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
    cleanup(&ctx, &[&q], &[]).await;
    Ok(format!(
        "{tally}, {refused} refused, order {}",
        if ordered { "checked" } else { "not declared" }
    ))
}

async fn oversize_payload_rejected_before_io(ctx: Ctx) -> Result<String> {
    let max = ctx
        .backend
        .capabilities()
        .max_message_size
        .ok_or_else(|| check_failed("max_message_size vanished"))?;
    // The destination does not exist: only a check made before any I/O can answer
    // PayloadTooLarge rather than NotFound.
    let dest = Destination::queue(ctx.name("never-declared"));
    let producer = ctx.backend.producer().await?;
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

async fn absent_capability_is_unsupported(ctx: Ctx) -> Result<String> {
    let caps = ctx.backend.capabilities().clone();
    let topo = ctx.backend.topology();
    let missing_q = ctx.name("never-declared");
    let dlq = ctx.name("never-declared-dlq");
    let mut probed = Vec::new();
    let expect_unsupported = |what: Capability, result: Result<()>| -> Result<()> {
        match result {
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(()),
            other => Err(check_failed(format!(
                "{what} is declared absent, but using it gave {other:?} instead of Unsupported"
            ))),
        }
    };
    if !caps.replay {
        let r = ctx
            .backend
            .consumer(
                &missing_q,
                ConsumerOptions::default().replay(Replay::Earliest),
            )
            .await
            .map(drop);
        expect_unsupported(Capability::Replay, r)?;
        probed.push(Capability::Replay);
    }
    if !caps.delayed_delivery {
        let producer = ctx.backend.producer().await?;
        let m = Message::builder("x")
            .delay(Duration::from_secs(1))
            .build()?;
        let r = producer
            .send(&Destination::queue(&missing_q), m)
            .await
            .map(drop);
        expect_unsupported(Capability::DelayedDelivery, r)?;
        probed.push(Capability::DelayedDelivery);
    }
    if !caps.transactions {
        let r = ctx
            .backend
            .transactional(&missing_q, TransactionOptions::new(ctx.name("tx")))
            .await
            .map(drop);
        expect_unsupported(Capability::Transactions, r)?;
        probed.push(Capability::Transactions);
    }
    for kind in ExchangeKind::ALL {
        let cap = Capability::Exchange(kind);
        if !caps.supports(cap) {
            let r = topo
                .declare_exchange(&ExchangeSpec::new(ctx.name("ex"), kind))
                .await;
            expect_unsupported(cap, r)?;
            probed.push(cap);
        }
    }
    let queue_probes: [(Capability, QueueSpec); 4] = [
        (
            Capability::DeadLetter,
            QueueSpec::new(&missing_q).dead_letter_queue(&dlq),
        ),
        (
            Capability::MaxDeliveryAttempts,
            QueueSpec::new(&missing_q).max_delivery_attempts(3),
        ),
        (
            Capability::MaxQueueLength,
            QueueSpec::new(&missing_q).max_length(10, Overflow::Reject),
        ),
        (
            Capability::MessageTtl,
            QueueSpec::new(&missing_q).message_ttl(Duration::from_secs(60)),
        ),
    ];
    for (cap, spec) in queue_probes {
        if !caps.supports(cap) {
            expect_unsupported(cap, topo.declare_queue(&spec).await)?;
            probed.push(cap);
        }
    }
    if probed.is_empty() {
        return Ok("every capability with an API is declared present: nothing to probe".into());
    }
    let names: Vec<&str> = probed.iter().map(|c| c.name()).collect();
    Ok(format!("probed {}", names.join(", ")))
}
