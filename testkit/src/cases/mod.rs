//! The cases of the conformance suite, one file per area, and the helpers they share.

mod batch;
mod binary;
mod capabilities;
mod dead_letter;
mod guarantees;
mod limits;
mod receive;
mod replay;
mod routing;
mod send;
mod settle;
mod timing;
mod transactions;
mod wire_forms;

use std::time::Duration;

use mailroom_core::{
    Capability, Consumer, ConsumerOptions, Delivery, Destination, ExchangeKind, Message, MessageId,
    Producer, QueueSpec, Result,
};

use crate::{check_failed, ensure, Case, Fixture, Tally};

/// How long a case waits for one expected delivery.
const WAIT: Duration = Duration::from_secs(15);
/// How long a case waits to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(500);

macro_rules! case {
    ($area:ident :: $name:ident, $checks:expr, [$($req:expr),* $(,)?]) => {
        Case {
            name: stringify!($name),
            checks: $checks,
            requires: &[$($req),*],
            run: |fixture| Box::pin($area::$name(fixture)),
        }
    };
}

pub(crate) static ALL: &[Case] = &[
    case!(
        send::round_trip,
        "payload (binary), headers, key, id and timestamp arrive intact",
        []
    ),
    case!(
        binary::binary_round_trip_1000_random,
        "1,000 random messages (NULs, invalid UTF-8, odd header names and values) arrive exactly",
        []
    ),
    case!(
        wire_forms::binary_keys_and_header_values_round_trip,
        "a key that is not UTF-8 and bytes header values arrive as the same bytes",
        []
    ),
    case!(
        wire_forms::repeated_header_names_keep_every_value_in_order,
        "a header name given three times arrives with its three values, in order",
        [Capability::RepeatedHeaderNames]
    ),
    case!(
        wire_forms::repeated_header_names_are_refused_where_unsupported,
        "without repeated_header_names, a repeated name is a typed error, never a lost value",
        []
    ),
    case!(
        receive::receive_timeout_on_empty_queue,
        "receive_timeout returns None when nothing comes",
        []
    ),
    case!(
        receive::try_receive_never_waits,
        "try_receive: None on an empty queue, the message once it is there, Closed after close",
        []
    ),
    case!(
        receive::missing_queue_is_not_found,
        "consuming a queue that does not exist is NotFound",
        []
    ),
    case!(
        receive::many_consumers_lose_nothing,
        "5,000 messages over 10 concurrent consumers, none lost",
        [Capability::CompetingConsumers]
    ),
    case!(
        receive::competing_consumers_share,
        "two consumers both get work, and each message is processed by exactly one of them",
        [Capability::CompetingConsumers]
    ),
    case!(
        settle::nack_requeue_counts_attempts,
        "a nacked message comes back with attempt + 1",
        [Capability::AttemptCount]
    ),
    case!(
        settle::dropped_consumer_redelivers,
        "unsettled deliveries of a dropped consumer are redelivered",
        [Capability::RedeliveryOnDrop]
    ),
    case!(
        settle::processing_continues_after_errors,
        "handler failures requeue; every message is processed",
        []
    ),
    case!(
        receive::per_key_order,
        "16 keys interleaved: each key arrives in send order",
        [Capability::PerKeyOrdering]
    ),
    case!(
        replay::replay_from_earliest,
        "after every message is acked, a consumer replaying from the earliest position reads them all again",
        [Capability::Replay]
    ),
    case!(
        transactions::transaction_commits_or_aborts_as_one,
        "an aborted transaction's outputs are never received and its inputs come back; a committed one's outputs arrive once and its inputs are consumed",
        [Capability::Transactions]
    ),
    case!(
        routing::fanout_reaches_every_queue,
        "every bound queue gets every message",
        [Capability::Exchange(ExchangeKind::Fanout)]
    ),
    case!(
        routing::direct_routing,
        "exact routing keys pick the queues",
        [Capability::Exchange(ExchangeKind::Direct)]
    ),
    case!(
        routing::topic_routing,
        "AMQP patterns (* and #) pick the queues",
        [Capability::Exchange(ExchangeKind::Topic)]
    ),
    case!(
        routing::headers_routing,
        "all / any header matches pick the queues",
        [Capability::Exchange(ExchangeKind::Headers)]
    ),
    case!(
        send::close_flushes_in_flight,
        "close waits for every enqueued send; later sends are Closed",
        []
    ),
    case!(
        dead_letter::dead_letter_on_nack,
        "nack(dead_letter) moves the message to the DLQ with its reason",
        [Capability::DeadLetter]
    ),
    case!(
        dead_letter::dead_letter_after_max_attempts,
        "after max attempts a requeue dead-letters instead",
        [Capability::DeadLetter, Capability::MaxDeliveryAttempts]
    ),
    case!(
        timing::delayed_delivery,
        "a delayed message and a delayed requeue never arrive early",
        [Capability::DelayedDelivery]
    ),
    case!(
        timing::message_ttl_expires,
        "an expired message goes to the dead-letter queue",
        [Capability::MessageTtl, Capability::DeadLetter]
    ),
    case!(
        limits::bounded_queue_rejects,
        "a full queue with overflow=reject refuses with QueueFull",
        [Capability::MaxQueueLength]
    ),
    case!(
        guarantees::levels_not_declared_are_refused,
        "every declared delivery guarantee opens a producer; every other is Unsupported, named",
        []
    ),
    case!(
        guarantees::unconfirmed_sends_arrive,
        "2,000 unconfirmed (at-most-once) sends arrive in the normal case; no receipt claims an offset",
        [Capability::DeliveryGuarantee(mailroom_core::DeliveryGuarantee::Unconfirmed)]
    ),
    case!(
        guarantees::leader_confirmed_sends_arrive,
        "2,000 leader-confirmed sends arrive in the normal case",
        [Capability::DeliveryGuarantee(mailroom_core::DeliveryGuarantee::LeaderConfirmed)]
    ),
    case!(
        batch::batch_of_10000,
        "a 10,000-message batch send loses nothing",
        []
    ),
    case!(
        batch::enqueue_batch_keeps_order,
        "enqueue_batch: one result per message, in order; a refused one stops nothing",
        []
    ),
    case!(
        limits::oversize_payload_rejected_before_io,
        "an oversize message is PayloadTooLarge before any I/O, and returned",
        [Capability::MaxMessageSize]
    ),
    case!(
        capabilities::absent_capability_is_unsupported,
        "every absent capability that has an API is Unsupported before I/O",
        []
    ),
];

// ---------------------------------------------------------------------------------------------
// helpers

async fn queue(fixture: &Fixture, spec: QueueSpec) -> Result<String> {
    fixture.backend.topology().declare_queue(&spec).await?;
    Ok(spec.name)
}

async fn fresh_queue(fixture: &Fixture, what: &str) -> Result<String> {
    queue(fixture, QueueSpec::new(fixture.name(what))).await
}

async fn cleanup(fixture: &Fixture, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        let _ = fixture.backend.topology().delete_queue(q).await;
    }
    for e in exchanges {
        let _ = fixture.backend.topology().delete_exchange(e).await;
    }
}

async fn consumer(fixture: &Fixture, queue: &str) -> Result<Box<dyn Consumer>> {
    fixture
        .backend
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
