//! Kafka transactions through `Backend::transactional`, against Apache Kafka
//! (`scripts/brokers.sh up kafka`; `MAILROOM_KAFKA_URL` overrides `kafka://127.0.0.1:9092`).
//!
//! - an aborted transaction's outputs never reach a `read_committed` reader, while a
//!   `read_uncommitted` reader does see them (so the test can see what it looks for), and its
//!   inputs come back; the committed retry's outputs are seen once and its inputs are consumed;
//! - a unit opened with the id of a live one fences it: the old one's commit is `Fenced` and its
//!   outputs are never visible;
//! - a rebalance that revokes a unit's input partitions mid-transaction turns its commit into an
//!   abort; with a second unit in the group, every input is consumed once and its output seen
//!   once;
//! - `?transactions=false` declares a broker without transactions: `Unsupported` before I/O.
//!
//! Each test runs under an overall bound and fails naming the phase it was in.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, ConsumerOptions, Destination, ErrorKind, Message, QueueSpec, Replay,
    TransactionCounts, TransactionInput, TransactionOptions, Transactional,
};
use mailroom_kafka::KafkaBackend;

const BOUND: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

/// The URL with one more query parameter.
fn url_with(param: &str) -> String {
    let base = url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{param}")
}

fn fresh(what: &str) -> String {
    format!(
        "mr-kafka-tx-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Where a test is, for the message of its overall timeout.
#[derive(Clone, Default)]
struct Phase(Arc<Mutex<String>>);

impl Phase {
    fn set(&self, phase: impl Into<String>) {
        *self.0.lock().unwrap() = phase.into();
    }
}

/// Run `test` under `BOUND`, failing with the phase it was in if it does not finish.
async fn bounded<F: Future<Output = ()>>(name: &str, test: impl FnOnce(Phase) -> F) {
    let phase = Phase::default();
    phase.set("starting");
    if tokio::time::timeout(BOUND, test(phase.clone()))
        .await
        .is_err()
    {
        panic!(
            "{name} did not finish within {BOUND:?}; it was {}",
            phase.0.lock().unwrap()
        );
    }
}

async fn declare(backend: &KafkaBackend, queue: &str, partitions: u32) {
    backend
        .topology()
        .declare_queue(&QueueSpec::new(queue).partitions(partitions))
        .await
        .unwrap();
}

async fn produce(backend: &KafkaBackend, queue: &str, payloads: &[String]) {
    let producer = backend.producer().await.unwrap();
    for p in payloads {
        producer
            .send(&Destination::queue(queue), Message::new(p.clone()))
            .await
            .unwrap();
    }
}

/// Receive exactly `n` inputs through `unit`.
async fn receive_n(unit: &mut Box<dyn Transactional>, n: usize) -> Vec<TransactionInput> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(unit.receive().await.unwrap());
    }
    got
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.payload()).into_owned()
}

/// Everything a fresh reader of `queue` sees from the beginning, read through a backend opened
/// with `isolation` (`read_committed` or `read_uncommitted`), until `expect` payloads have come
/// and then `quiet` passes with nothing new. Payload → times seen.
async fn read_all(
    queue: &str,
    isolation: &str,
    expect: usize,
    quiet: Duration,
) -> BTreeMap<String, usize> {
    let reader = KafkaBackend::from_url(&url_with(&format!("isolation.level={isolation}")))
        .await
        .unwrap();
    let mut consumer = reader
        .consumer(queue, ConsumerOptions::default().replay(Replay::Earliest))
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    let mut total = 0;
    loop {
        let wait = if total < expect {
            Duration::from_secs(30)
        } else {
            quiet
        };
        match consumer.receive_timeout(wait).await.unwrap() {
            Some(d) => {
                *seen.entry(text(d.message())).or_insert(0) += 1;
                total += 1;
                d.ack().await.unwrap();
            }
            None => break,
        }
    }
    consumer.close().await.unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_transaction_is_invisible_to_read_committed_readers() {
    bounded("aborted transaction test", |phase| async move {
        phase.set("connecting and declaring");
        let b = KafkaBackend::from_url(&url()).await.unwrap();
        let (input, output) = (fresh("in"), fresh("out"));
        declare(&b, &input, 3).await;
        declare(&b, &output, 3).await;
        let payloads: Vec<String> = (0..10).map(|i| format!("in-{i}")).collect();
        produce(&b, &input, &payloads).await;
        let out = Destination::queue(&output);

        phase.set("first transaction: receive 10, send 10, abort");
        let id = fresh("id");
        let mut unit = b
            .transactional(&input, TransactionOptions::new(&id))
            .await
            .unwrap();
        let first = receive_n(&mut unit, 10).await;
        for i in &first {
            unit.send(&out, Message::new(format!("aborted-{}", text(&i.message))))
                .await
                .unwrap();
        }
        assert_eq!(
            unit.pending(),
            TransactionCounts {
                inputs: 10,
                outputs: 10
            }
        );
        phase.set("read_uncommitted reader while the transaction is open");
        // Proves the outputs are in the log (abort would otherwise purge them unsent, and the
        // read_committed check below would prove nothing).
        let in_log = read_all(&output, "read_uncommitted", 10, Duration::from_millis(500)).await;
        assert_eq!(in_log.len(), 10, "{in_log:?}");
        phase.set("abort");
        unit.abort().await.unwrap();
        assert_eq!(unit.pending(), TransactionCounts::default());

        phase.set("second transaction: the same 10 inputs again, send 10, commit");
        let second = receive_n(&mut unit, 10).await;
        let ids = |v: &[TransactionInput]| {
            let mut ids: Vec<String> = v.iter().map(|i| i.message.id().to_string()).collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids(&first),
            ids(&second),
            "the aborted inputs come back, and only they"
        );
        for i in &second {
            unit.send(
                &out,
                Message::new(format!("committed-{}", text(&i.message))),
            )
            .await
            .unwrap();
        }
        let commit_started = Instant::now();
        let committed = unit.commit().await.unwrap();
        println!(
            "commit of 10 inputs + 10 outputs: {:?}",
            commit_started.elapsed()
        );
        assert_eq!(
            committed,
            TransactionCounts {
                inputs: 10,
                outputs: 10
            }
        );
        unit.close().await.unwrap();

        phase.set("reopened unit: the committed inputs are consumed");
        produce(&b, &input, &["after-commit".to_owned()]).await;
        let mut reopened = b
            .transactional(&input, TransactionOptions::new(&id))
            .await
            .unwrap();
        let next = reopened.receive().await.unwrap();
        assert_eq!(
            text(&next.message),
            "after-commit",
            "an input committed with the transaction was delivered again"
        );
        reopened.close().await.unwrap();

        phase.set("read_committed reader");
        let committed_view = read_all(&output, "read_committed", 10, Duration::from_secs(3)).await;
        phase.set("read_uncommitted reader");
        let uncommitted_view =
            read_all(&output, "read_uncommitted", 20, Duration::from_secs(3)).await;

        let aborted_seen = |view: &BTreeMap<String, usize>| {
            view.iter()
                .filter(|(k, _)| k.starts_with("aborted-"))
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        println!(
            "read_committed: {} outputs ({} aborted); read_uncommitted: {} outputs ({} aborted)",
            committed_view.values().sum::<usize>(),
            aborted_seen(&committed_view),
            uncommitted_view.values().sum::<usize>(),
            aborted_seen(&uncommitted_view),
        );
        assert_eq!(aborted_seen(&committed_view), 0, "{committed_view:?}");
        for p in &payloads {
            assert_eq!(
                committed_view.get(&format!("committed-{p}")),
                Some(&1),
                "committed output of {p} not seen exactly once: {committed_view:?}"
            );
        }
        assert_eq!(committed_view.len(), 10, "{committed_view:?}");
        assert_eq!(
            aborted_seen(&uncommitted_view),
            10,
            "read_uncommitted shows the aborted outputs: {uncommitted_view:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_opened_with_the_same_id_fences_the_old_one() {
    bounded("fencing test", |phase| async move {
        phase.set("connecting and declaring");
        let b = KafkaBackend::from_url(&url()).await.unwrap();
        let (input, output) = (fresh("in"), fresh("out"));
        declare(&b, &input, 1).await;
        declare(&b, &output, 1).await;
        let payloads: Vec<String> = (0..5).map(|i| format!("in-{i}")).collect();
        produce(&b, &input, &payloads).await;
        let out = Destination::queue(&output);
        let id = fresh("id");

        phase.set("zombie: receive 5, send 5, leave the transaction open");
        let mut zombie = b
            .transactional(&input, TransactionOptions::new(&id))
            .await
            .unwrap();
        for i in receive_n(&mut zombie, 5).await {
            zombie
                .send(&out, Message::new(format!("zombie-{}", text(&i.message))))
                .await
                .unwrap();
        }

        phase.set("successor opens with the same id");
        let mut successor = b
            .transactional(&input, TransactionOptions::new(&id))
            .await
            .unwrap();

        phase.set("zombie commits");
        let err = zombie.commit().await.unwrap_err();
        println!("zombie commit: {err}");
        assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
        assert!(!err.is_temporary(), "{err}");
        assert_eq!(err.backend(), Some("kafka"));
        let again = zombie
            .send(&out, Message::new("zombie-late"))
            .await
            .unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Fenced, "{again}");
        assert!(
            again.undelivered().is_some(),
            "a refused send hands the message back"
        );
        // Its group membership goes with it, so the successor is given the partition.
        zombie.close().await.unwrap();

        phase.set("successor receives the zombie's inputs, sends, commits");
        let inputs = receive_n(&mut successor, 5).await;
        for i in &inputs {
            successor
                .send(
                    &out,
                    Message::new(format!("successor-{}", text(&i.message))),
                )
                .await
                .unwrap();
        }
        assert_eq!(successor.commit().await.unwrap().outputs, 5);
        successor.close().await.unwrap();

        phase.set("read_committed reader");
        let view = read_all(&output, "read_committed", 5, Duration::from_secs(3)).await;
        println!("read_committed after fencing: {view:?}");
        assert!(view.keys().all(|k| k.starts_with("successor-")), "{view:?}");
        assert_eq!(view.len(), 5, "{view:?}");
        assert!(view.values().all(|n| *n == 1), "{view:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_declared_without_transactions_is_unsupported_before_io() {
    bounded("transactions=false test", |phase| async move {
        phase.set("connecting");
        // Through the registry, as applications open it: the capability check refuses.
        let b = mailroom_core::Registry::new()
            .with(mailroom_kafka::KafkaFactory)
            .connect(&url_with("transactions=false"))
            .await
            .unwrap();
        assert!(!b.capabilities().transactions);
        phase.set("transactional on a closed backend");
        // Closed first: any I/O would fail with `Closed`, so `Unsupported` proves none was done.
        b.close().await.unwrap();
        let started = Instant::now();
        let err = match b
            .transactional("any-queue", TransactionOptions::new("t"))
            .await
        {
            Ok(_) => panic!("transactions=false opened a transactional unit"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert_eq!(err.operation(), Some("transactional"));
        assert!(started.elapsed() < Duration::from_secs(1));
    })
    .await;
}

/// Receive, send one output per input and commit every few inputs until `consumed` reaches
/// `total` (counting only committed inputs); aborted commits are carried on from.
async fn drain(
    mut unit: Box<dyn Transactional>,
    out: Destination,
    consumed: Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
) -> (usize, usize) {
    use std::sync::atomic::Ordering::SeqCst;
    let (mut commits, mut aborts) = (0, 0);
    while consumed.load(SeqCst) < total {
        let input = unit
            .receive_timeout(Duration::from_millis(300))
            .await
            .unwrap();
        if let Some(input) = &input {
            unit.send(&out, Message::new(format!("out-{}", text(&input.message))))
                .await
                .unwrap();
        }
        if input.is_none() || unit.pending().inputs >= 4 {
            match unit.commit().await {
                Ok(counts) => {
                    commits += 1;
                    consumed.fetch_add(counts.inputs, SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::Aborted => aborts += 1,
                Err(e) => panic!("commit failed: {e}"),
            }
        }
    }
    unit.close().await.unwrap();
    (commits, aborts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_mid_transaction_aborts_it_instead_of_committing_revoked_inputs() {
    bounded("rebalance test", |phase| async move {
        use std::sync::atomic::AtomicUsize;
        phase.set("connecting and declaring");
        let b = KafkaBackend::from_url(&url()).await.unwrap();
        let (input, output) = (fresh("in"), fresh("out"));
        declare(&b, &input, 4).await;
        declare(&b, &output, 2).await;
        let payloads: Vec<String> = (0..40).map(|i| format!("in-{i}")).collect();
        let producer = b.producer().await.unwrap();
        for (i, p) in payloads.iter().enumerate() {
            let m = Message::builder(p.clone())
                .key(format!("k{i}"))
                .build()
                .unwrap();
            producer.send(&Destination::queue(&input), m).await.unwrap();
        }
        let out = Destination::queue(&output);

        phase.set("first unit: a transaction with inputs from every partition");
        let mut first = b
            .transactional(&input, TransactionOptions::new(fresh("a")))
            .await
            .unwrap();
        for i in receive_n(&mut first, 8).await {
            first
                .send(&out, Message::new(format!("out-{}", text(&i.message))))
                .await
                .unwrap();
        }

        phase.set("second unit joins the group; the first keeps polling");
        let second = b
            .transactional(&input, TransactionOptions::new(fresh("b")))
            .await
            .unwrap();
        let consumed = Arc::new(AtomicUsize::new(0));
        let joined = tokio::spawn(drain(second, out.clone(), consumed.clone(), payloads.len()));
        // The rebalance's revoke runs inside the first unit's receive; poll until it has.
        let started = Instant::now();
        let error = loop {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no rebalance within 30 s"
            );
            if let Some(i) = first
                .receive_timeout(Duration::from_millis(200))
                .await
                .unwrap()
            {
                first
                    .send(&out, Message::new(format!("out-{}", text(&i.message))))
                    .await
                    .unwrap();
            }
            if consumed.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                // The second unit committed inputs: the group was rebalanced.
                break first.commit().await.unwrap_err();
            }
        };
        println!("first unit's commit after the rebalance: {error}");
        assert_eq!(error.kind(), ErrorKind::Aborted, "{error}");
        assert!(error.is_temporary());
        assert!(error.message().contains("revoked"), "{error}");

        phase.set("both units drain the queue");
        let (first_stats, second_stats) = tokio::join!(
            drain(first, out.clone(), consumed.clone(), payloads.len()),
            joined
        );
        let second_stats = second_stats.unwrap();
        println!(
            "first unit: {} commits, {} aborts after the rebalance; second: {} commits, {} aborts",
            first_stats.0, first_stats.1, second_stats.0, second_stats.1
        );
        assert_eq!(
            consumed.load(std::sync::atomic::Ordering::SeqCst),
            payloads.len(),
            "each input consumed once"
        );

        phase.set("read_committed reader");
        let view = read_all(&output, "read_committed", 40, Duration::from_secs(3)).await;
        for p in &payloads {
            assert_eq!(view.get(&format!("out-{p}")), Some(&1), "{view:?}");
        }
        assert_eq!(view.len(), 40, "{view:?}");
    })
    .await;
}
