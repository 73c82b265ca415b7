//! Receiving: waiting and not waiting, a missing queue, many and competing consumers, per-key order.

use super::{
    cleanup, consumer, ensure_all_seen, fresh_queue, ids, numbered, queue, receive, send_all, WAIT,
};
use crate::{check_failed, ensure, Fixture, Tally};
use mailroom_core::{Destination, ErrorKind, Message, MessageId, QueueSpec, Result};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) async fn receive_timeout_on_empty_queue(fixture: Fixture) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let mut c = consumer(&fixture, &q).await?;
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
    cleanup(&fixture, &[&q], &[]).await;
    Ok(String::new())
}

pub(super) async fn try_receive_never_waits(fixture: Fixture) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let mut c = consumer(&fixture, &q).await?;
    let started = Instant::now();
    let empty = c.try_receive().transpose()?;
    ensure(empty.is_none(), || {
        "try_receive on an empty queue returned a delivery".into()
    })?;
    ensure(started.elapsed() < Duration::from_millis(100), || {
        format!("try_receive on an empty queue took {:?}", started.elapsed())
    })?;
    let sent = Message::new("ready");
    let producer = fixture.backend.producer().await?;
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
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!("{polls} empty polls before it arrived"))
}

pub(super) async fn missing_queue_is_not_found(fixture: Fixture) -> Result<String> {
    let q = fixture.name("never-declared");
    let result = async {
        let mut c = consumer(&fixture, &q).await?;
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

pub(super) async fn many_consumers_lose_nothing(fixture: Fixture) -> Result<String> {
    const N: usize = 5_000;
    const CONSUMERS: usize = 10;
    let q = fresh_queue(&fixture, "q").await?;
    let sent = numbered(N, "many")?;
    let tally = Arc::new(Mutex::new(Tally::new()));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let mut c = consumer(&fixture, &q).await?;
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
    let producer = fixture.backend.producer().await?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    for t in tasks {
        t.await
            .map_err(|e| check_failed(format!("consumer task failed: {e}")))??;
    }
    let tally = tally.lock().unwrap().clone();
    ensure_all_seen(&tally, &sent, "10 consumers")?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(tally.to_string())
}

pub(super) async fn competing_consumers_share(fixture: Fixture) -> Result<String> {
    const N: usize = 1_000;
    const CONSUMERS: usize = 2;
    // A partitioned queue gives each partition to one member of the group: with fewer
    // partitions than consumers, a consumer idles by design. One partition per consumer, and
    // keyed messages spread over them, so the case shows the sharing the broker can do.
    let partitioned = fixture.backend.capabilities().partitioned_queues;
    let mut spec = QueueSpec::new(fixture.name("q"));
    if partitioned {
        spec = spec.partitions(CONSUMERS as u32);
    }
    let q = queue(&fixture, spec).await?;
    let keyed = |prefix: &str, i: usize| {
        Message::builder(format!("{prefix}-{i}"))
            .key(i.to_string())
            .header("seq", i.to_string())
            .build()
    };
    let sent: Vec<Message> = (0..N).map(|i| keyed("share", i)).collect::<Result<_>>()?;
    let real: HashSet<MessageId> = ids(&sent).into_iter().collect();
    let producer = fixture.backend.producer().await?;
    let total = Arc::new(Mutex::new(Tally::new()));
    // Per consumer: probes seen (the warm-up below), and the real messages it processed.
    let probed: Arc<Vec<Mutex<usize>>> = Arc::new((0..CONSUMERS).map(|_| Mutex::new(0)).collect());
    let real = Arc::new(real);
    let mut tasks = Vec::new();
    for me in 0..CONSUMERS {
        let mut c = consumer(&fixture, &q).await?;
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
                    // A millisecond of work per message, as a consumer with something to do:
                    // one that takes microseconds (memory) drains the queue before a peer whose
                    // thread the OS has not scheduled yet runs, which would test the scheduler
                    // of a loaded machine rather than the broker's sharing.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    d.ack().await?;
                }
            }
            c.close().await?;
            Ok::<_, mailroom_core::Error>(mine)
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
    cleanup(&fixture, &[&q], &[]).await;
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

pub(super) async fn per_key_order(fixture: Fixture) -> Result<String> {
    const KEYS: usize = 16;
    const PER_KEY: usize = 40;
    let q = queue(&fixture, QueueSpec::new(fixture.name("q")).partitions(4)).await?;
    let producer = fixture.backend.producer().await?;
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
    let mut c = consumer(&fixture, &q).await?;
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
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!("{KEYS} keys x {PER_KEY}, {tally}"))
}
