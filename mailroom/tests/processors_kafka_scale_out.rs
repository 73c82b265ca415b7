//! Scale-out through Kafka's consumer group: two instances of one keyed, windowed pipeline on a
//! topic produce the same per-key window totals as one instance, with a rebalance in the middle
//! (the second instance joins while the first holds open windows).
//!
//! At-least-once allows duplicates: an instance that loses a partition in the rebalance still
//! flushes the windows it held (its acks for that partition are ignored), and the partition's new
//! owner reads it again from the last commit. So results are compared per (key, window) by the
//! largest count reported, which must be the full count; extra results are counted and printed.
//!
//! The instances use librdkafka's default (eager) partition assignment: a rebalance revokes
//! every partition and usually hands most of them straight back, so an instance receives again
//! the inputs its open windows still hold. Windows recognise those by partition and offset and
//! do not count them twice (see `mailroom_processors::window`).
//!
//! `cargo test -p mailroom --features kafka --test processors_kafka_scale_out -- --nocapture`
//! with a Kafka-protocol broker on loopback (`MAILROOM_KAFKA_URL`, default
//! `kafka://127.0.0.1:9092`).
#![cfg(feature = "kafka")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::processors::{Pipeline, PipelineHandle, Sink, Source, WindowSpec, Windowed};
use mailroom::{Backend, ConsumerOptions, Destination, Message, MessageId, QueueSpec, Timestamp};

const MESSAGES: usize = 2000;
const KEYS: usize = 16;
const PARTITIONS: u32 = 4;
const WINDOW: Duration = Duration::from_secs(5);
/// Event times start here and advance 10 ms per message (20 s in all, 4 windows per key).
const T0: u64 = 1_700_000_000_000;
/// Generous: a loaded machine and a rebalance may be slow; nothing here measures speed.
const DEADLINE: Duration = Duration::from_secs(600);

type Totals = BTreeMap<(String, u64), u64>;

/// The broker URL, with the client's default partition assignment unless the URL picks one.
fn kafka_url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".to_owned())
}

async fn connect() -> Arc<dyn Backend> {
    let started = Instant::now();
    loop {
        match mailroom::connect(&kafka_url()).await {
            Ok(broker) => return broker,
            // A broker restarted by another test may still be starting.
            Err(e) if e.is_temporary() && started.elapsed() < Duration::from_secs(60) => {
                eprintln!("Kafka not reachable yet ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("Kafka not reachable (scripts/brokers.sh): {e}"),
        }
    }
}

fn event(i: usize) -> Message {
    Message::builder(format!("{i}"))
        .key(format!("k{}", i % KEYS))
        .timestamp(Timestamp::from_millis(T0 + i as u64 * 10))
        .build()
        .unwrap()
}

fn expected() -> Totals {
    let mut totals = Totals::new();
    for i in 0..MESSAGES {
        let ts = T0 + i as u64 * 10;
        let start = ts - ts % WINDOW.as_millis() as u64;
        *totals.entry((format!("k{}", i % KEYS), start)).or_default() += 1;
    }
    totals
}

async fn produce(kafka: &dyn Backend, topic: &str, range: std::ops::Range<usize>) {
    let producer = kafka.producer().await.unwrap();
    let destination = Destination::queue(topic);
    let mut pending: Vec<Message> = range.map(event).collect();
    // Temporary failures (a broker restarted by another test) are sent again, a few times.
    for attempt in 1..=10 {
        let mut failed = Vec::new();
        for result in producer
            .send_batch(&destination, std::mem::take(&mut pending))
            .await
            .unwrap()
        {
            if let Err(mut e) = result {
                assert!(e.is_temporary() && attempt < 10, "send failed: {e}");
                failed.push(
                    e.take_undelivered()
                        .expect("a failed send returns its message"),
                );
            }
        }
        if failed.is_empty() {
            break;
        }
        eprintln!("{} sends failed; retrying", failed.len());
        tokio::time::sleep(Duration::from_secs(2)).await;
        pending = failed;
    }
    producer.close().await.unwrap();
}

/// One instance: count per key over tumbling event-time windows. The watermark trails by an
/// hour, so windows fire when the instance shuts down (flushing them); a window's inputs are
/// acked only after its result is confirmed.
async fn instance(kafka: &dyn Backend, input: &str, output: &str) -> PipelineHandle {
    let consumer = kafka
        .consumer(input, ConsumerOptions::default().prefetch(4096))
        .await
        .unwrap();
    let sink: Arc<dyn mailroom::Producer> = Arc::from(kafka.producer().await.unwrap());
    Pipeline::builder()
        .max_in_flight(4096)
        .scaled_out()
        .source(Source::new(consumer).partitioned_by_key())
        .flow()
        .window(
            "per-key-5s",
            WindowSpec::tumbling(WINDOW).max_out_of_order(Duration::from_secs(3600)),
        )
        .count()
        .map("render", |w: Windowed<u64>| {
            Message::new(format!(
                "{} {} {} {}",
                w.key.unwrap_or_default(),
                w.window.start.as_millis(),
                w.value,
                w.partial
            ))
        })
        .to(Sink::new(sink, Destination::queue(output)))
        .expect("a key-partitioned source makes keyed windows valid when scaled out")
        .spawn()
}

fn received(handles: &[&PipelineHandle]) -> u64 {
    handles
        .iter()
        .map(|h| h.metrics().snapshot().received)
        .sum()
}

/// Wait until the instances together received at least `at_least` inputs and then nothing more
/// for `quiet`.
async fn settle_down(handles: &[&PipelineHandle], at_least: u64, quiet: Duration, since: Instant) {
    let mut last = (received(handles), Instant::now());
    loop {
        assert!(
            since.elapsed() < DEADLINE,
            "stuck at {} received",
            received(handles)
        );
        for h in handles {
            assert!(!h.is_finished(), "an instance stopped early");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received(handles);
        if now != last.0 {
            last = (now, Instant::now());
        } else if now >= at_least && last.1.elapsed() >= quiet {
            return;
        }
    }
}

/// Read every window result from `output`: per (key, window) the largest count, and how many
/// results there were.
async fn read_results(kafka: &dyn Backend, output: &str, windows: usize) -> (Totals, usize) {
    let mut consumer = kafka.consumer(output, Default::default()).await.unwrap();
    let mut totals = Totals::new();
    let mut results = 0;
    let started = Instant::now();
    loop {
        let timeout = if totals.len() < windows {
            Duration::from_secs(10)
        } else {
            // Everything expected is here; give duplicates a moment to show up too.
            Duration::from_secs(3)
        };
        match consumer.receive_timeout(timeout).await.unwrap() {
            Some(d) => {
                let text = String::from_utf8_lossy(d.message().payload()).into_owned();
                let parts: Vec<&str> = text.split(' ').collect();
                let (key, start, count) = (
                    parts[0].to_owned(),
                    parts[1].parse::<u64>().unwrap(),
                    parts[2].parse::<u64>().unwrap(),
                );
                let best = totals.entry((key, start)).or_default();
                *best = (*best).max(count);
                results += 1;
                d.ack().await.unwrap();
            }
            None if totals.len() >= windows || started.elapsed() > DEADLINE => break,
            None => {}
        }
    }
    consumer.close().await.unwrap();
    (totals, results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_a_rebalance_match_one_instance() {
    let kafka = connect().await;
    let id = MessageId::generate();
    let (single_in, single_out) = (format!("so-single-in-{id}"), format!("so-single-out-{id}"));
    let (multi_in, multi_out) = (format!("so-multi-in-{id}"), format!("so-multi-out-{id}"));
    for q in [&single_in, &multi_in] {
        kafka
            .topology()
            .declare_queue(&QueueSpec::new(q).partitions(PARTITIONS))
            .await
            .unwrap();
    }
    for q in [&single_out, &multi_out] {
        kafka
            .topology()
            .declare_queue(&QueueSpec::new(q))
            .await
            .unwrap();
    }
    let expected = expected();
    let started = Instant::now();

    // One instance over the whole topic.
    produce(&*kafka, &single_in, 0..MESSAGES).await;
    let single = instance(&*kafka, &single_in, &single_out).await;
    settle_down(&[&single], MESSAGES as u64, Duration::from_secs(5), started).await;
    let report = single.shutdown().await.unwrap();
    assert!(report.error.is_none(), "{report:?}");
    let (one, one_results) = read_results(&*kafka, &single_out, expected.len()).await;
    assert_eq!(one, expected, "one instance counts every key and window");

    // Two instances: the second joins the group mid-run, while the first holds open windows.
    produce(&*kafka, &multi_in, 0..MESSAGES / 2).await;
    let first = instance(&*kafka, &multi_in, &multi_out).await;
    settle_down(
        &[&first],
        (MESSAGES / 4) as u64,
        Duration::from_secs(1),
        started,
    )
    .await;
    let second = instance(&*kafka, &multi_in, &multi_out).await;
    produce(&*kafka, &multi_in, MESSAGES / 2..MESSAGES).await;
    // The rebalance happened once the second instance has received something.
    while second.metrics().snapshot().received == 0 {
        assert!(
            started.elapsed() < DEADLINE,
            "the second instance never got a partition"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    settle_down(
        &[&first, &second],
        MESSAGES as u64,
        Duration::from_secs(10),
        started,
    )
    .await;
    let (a, b) = tokio::join!(first.shutdown(), second.shutdown());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.error.is_none(), "{a:?}");
    assert!(b.error.is_none(), "{b:?}");
    let (two, two_results) = read_results(&*kafka, &multi_out, expected.len()).await;
    println!(
        "one instance: {one_results} results for {} windows; two instances: received {} + {} \
         inputs ({} read again after the rebalance), {two_results} results ({} duplicates)",
        expected.len(),
        a.metrics.received,
        b.metrics.received,
        (a.metrics.received + b.metrics.received).saturating_sub(MESSAGES as u64),
        two_results.saturating_sub(expected.len())
    );
    assert_eq!(two, one, "two instances report the same totals as one");

    for q in [&single_in, &single_out, &multi_in, &multi_out] {
        let _ = kafka.topology().delete_queue(q).await;
    }
}
