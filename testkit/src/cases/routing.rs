//! Exchanges: fanout, direct, topic and headers routing.

use super::{
    cleanup, consumer, drain, ensure_all_seen, expect_quiet, fresh_queue, numbered, send_all,
};
use crate::{ensure, Fixture};
use mailroom_core::{
    Binding, Destination, ExchangeKind, ExchangeSpec, HeaderMatch, Message, MessageId, Result,
};
use std::collections::HashSet;

pub(super) async fn fanout_reaches_every_queue(fixture: Fixture) -> Result<String> {
    const N: usize = 100;
    let topo = fixture.backend.topology();
    let ex = fixture.name("ex");
    topo.declare_exchange(&ExchangeSpec::new(&ex, ExchangeKind::Fanout))
        .await?;
    let mut queues = Vec::new();
    for i in 0..3 {
        let q = fresh_queue(&fixture, &format!("q{i}")).await?;
        topo.bind(&Binding::fanout(&ex, &q)).await?;
        queues.push(q);
    }
    let mut consumers = Vec::new();
    for q in &queues {
        consumers.push(consumer(&fixture, q).await?);
    }
    let producer = fixture.backend.producer().await?;
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
    cleanup(&fixture, &refs, &[&ex]).await;
    Ok(format!("3 queues: {}", notes.join("; ")))
}

/// Send one message per routing key (or header set), then check which queues got which.
async fn check_routes(
    fixture: &Fixture,
    ex: &str,
    queues: &[String],
    sends: Vec<(&str, Message)>,
    expect: &[&[usize]],
) -> Result<String> {
    let producer = fixture.backend.producer().await?;
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
        let mut c = consumer(fixture, q).await?;
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
    cleanup(fixture, &refs, &[ex]).await;
    Ok(String::new())
}

async fn declare_exchange_with_queues(
    fixture: &Fixture,
    kind: ExchangeKind,
    n: usize,
) -> Result<(String, Vec<String>)> {
    let ex = fixture.name("ex");
    fixture
        .backend
        .topology()
        .declare_exchange(&ExchangeSpec::new(&ex, kind))
        .await?;
    let mut queues = Vec::new();
    for i in 0..n {
        queues.push(fresh_queue(fixture, &format!("q{i}")).await?);
    }
    Ok((ex, queues))
}

pub(super) async fn direct_routing(fixture: Fixture) -> Result<String> {
    let (ex, qs) = declare_exchange_with_queues(&fixture, ExchangeKind::Direct, 3).await?;
    let topo = fixture.backend.topology();
    topo.bind(&Binding::key(&ex, &qs[0], "a")).await?;
    topo.bind(&Binding::key(&ex, &qs[1], "b")).await?;
    topo.bind(&Binding::key(&ex, &qs[2], "a")).await?;
    topo.bind(&Binding::key(&ex, &qs[2], "b")).await?;
    let sends = vec![
        ("a", Message::new("to a")),
        ("b", Message::new("to b")),
        ("a", Message::new("to a again")),
    ];
    check_routes(&fixture, &ex, &qs, sends, &[&[0, 2], &[1, 2], &[0, 2]]).await
}

pub(super) async fn topic_routing(fixture: Fixture) -> Result<String> {
    let (ex, qs) = declare_exchange_with_queues(&fixture, ExchangeKind::Topic, 4).await?;
    let topo = fixture.backend.topology();
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
        &fixture,
        &ex,
        &qs,
        sends,
        &[&[0, 1, 3], &[1, 2, 3], &[2, 3], &[1, 3]],
    )
    .await
}

pub(super) async fn headers_routing(fixture: Fixture) -> Result<String> {
    let (ex, qs) = declare_exchange_with_queues(&fixture, ExchangeKind::Headers, 2).await?;
    let topo = fixture.backend.topology();
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
    check_routes(&fixture, &ex, &qs, sends, &[&[0, 1], &[1], &[1]]).await
}
