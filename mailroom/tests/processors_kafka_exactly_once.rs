//! The exactly-once pipeline (Kafka → Kafka) SIGKILLed mid-run, again and again: a
//! `read_committed` reader of its output sees every expected output exactly once.
//!
//! The pipeline runs in a separate process, this test binary re-run in worker mode
//! (`MAILROOM_EOS_WORKER` set), so that a kill is a real crash: no destructor, no abort, no
//! leave-group. The parent writes the inputs, reads the output topic with a `read_committed`
//! mailroom consumer, kills the worker (SIGKILL) each time the reader has seen another fifth of
//! the outputs and starts it again at once with the same transactional id, which aborts the
//! transaction the killed one left open. Afterwards a `read_uncommitted` reader counts what those
//! aborted transactions had already written, to show the kills landed mid-transaction.
//!
//! `cargo test -p mailroom --features kafka --test processors_kafka_exactly_once -- --nocapture`
//! with Apache Kafka on loopback (`scripts/brokers.sh up kafka`; `MAILROOM_KAFKA_URL` overrides
//! `kafka://127.0.0.1:9092`).
#![cfg(feature = "kafka")]

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom::processors::ExactlyOnce;
use mailroom::{ConsumerOptions, Destination, Message, QueueSpec, Replay, TransactionOptions};

const INPUTS: usize = 3_000;
const KILLS: usize = 4;
const PARTITIONS: u32 = 3;
/// Whole-test bound; a normal run takes a fraction of it.
const BOUND: Duration = Duration::from_secs(120);
/// How long the reader waits, once everything is seen, for a duplicate to show up.
const QUIET: Duration = Duration::from_secs(3);
/// Work per input in the worker, so that a run lasts long enough for kills to land mid-run.
const WORK_PER_INPUT: Duration = Duration::from_millis(2);
const TEST_NAME: &str = "exactly_once_outputs_survive_sigkilled_workers";

fn kafka_url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".to_owned())
}

fn url_with(param: &str) -> String {
    let base = kafka_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{param}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_outputs_survive_sigkilled_workers() {
    if let Ok(id) = std::env::var("MAILROOM_EOS_WORKER") {
        return worker(id).await;
    }
    let phase = Arc::new(Mutex::new("connecting".to_owned()));
    let run = tokio::time::timeout(BOUND, parent(phase.clone())).await;
    if run.is_err() {
        panic!(
            "the exactly-once kill test did not finish within {BOUND:?}; it was {}",
            phase.lock().unwrap()
        );
    }
}

/// Worker mode: run the pipeline until killed.
async fn worker(id: String) {
    let input = std::env::var("MAILROOM_EOS_INPUT").expect("worker input topic");
    let output = std::env::var("MAILROOM_EOS_OUTPUT").expect("worker output topic");
    // Static membership: the restarted worker gets its partitions back at once instead of
    // after the session timeout of the member it replaces.
    let kafka = mailroom::connect(&url_with(&format!("group.instance.id={id}")))
        .await
        .expect("worker connects");
    let pipeline = ExactlyOnce::builder(kafka.clone(), input, TransactionOptions::new(&id))
        .sink(kafka, Destination::queue(output))
        .max_batch(100)
        .commit_interval(Duration::from_millis(50))
        .transform(|input| {
            std::thread::sleep(WORK_PER_INPUT);
            let seq = input.message.headers().get("seq").unwrap_or("?").to_owned();
            let mut out = Message::builder(format!("out-{seq}")).header("seq", seq);
            if let Some(key) = input.message.key() {
                out = out.key(key);
            }
            Ok(vec![out.build()?])
        })
        .build()
        .await
        .expect("worker builds its pipeline");
    eprintln!("[worker {}] running", std::process::id());
    let report = pipeline.run().await;
    panic!("the worker stopped by itself: {report:?}");
}

/// A running worker process, SIGKILLed when dropped (so a failing test leaves none behind).
struct Worker(Child);

impl Worker {
    fn start(id: &str, input: &str, output: &str) -> Worker {
        let child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env("MAILROOM_EOS_WORKER", id)
            .env("MAILROOM_EOS_INPUT", input)
            .env("MAILROOM_EOS_OUTPUT", output)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the worker");
        Worker(child)
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Panic if the worker ended by itself (it only ends when killed).
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("the worker exited by itself with {status}");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Payload → times a reader saw it.
type Tally = Arc<Mutex<HashMap<String, usize>>>;

/// Read `topic` from the beginning through a backend opened at `url`, into `tally`, until
/// `stop` is set.
async fn read_into(
    url: String,
    topic: String,
    tally: Tally,
    stop: Arc<AtomicBool>,
) -> mailroom::Result<()> {
    let backend = mailroom::connect(&url).await?;
    let mut consumer = backend
        .consumer(&topic, ConsumerOptions::default().replay(Replay::Earliest))
        .await?;
    while !stop.load(Ordering::Relaxed) {
        if let Some(d) = consumer.receive_timeout(Duration::from_millis(200)).await? {
            let text = String::from_utf8_lossy(d.message().payload()).into_owned();
            *tally.lock().unwrap().entry(text).or_default() += 1;
            d.ack().await?;
        }
    }
    consumer.close().await
}

fn distinct(tally: &Tally) -> usize {
    tally.lock().unwrap().len()
}

async fn parent(phase: Arc<Mutex<String>>) {
    let set = |p: String| *phase.lock().unwrap() = p;
    let started = Instant::now();
    let kafka = mailroom::connect(&kafka_url())
        .await
        .expect("Kafka reachable (scripts/brokers.sh up kafka)");
    let run = &uuid_like();
    let (input, output) = (format!("mr-eos-in-{run}"), format!("mr-eos-out-{run}"));
    for topic in [&input, &output] {
        kafka
            .topology()
            .declare_queue(&QueueSpec::new(topic).partitions(PARTITIONS))
            .await
            .unwrap();
    }

    set(format!("writing {INPUTS} inputs"));
    let producer = kafka.producer().await.unwrap();
    let destination = Destination::queue(&input);
    let mut confirms = Vec::with_capacity(INPUTS);
    for i in 0..INPUTS {
        let message = Message::builder(format!("in-{i}"))
            .key(format!("k{}", i % 16))
            .header("seq", i.to_string())
            .build()
            .unwrap();
        confirms.push(producer.enqueue(&destination, message).await.unwrap());
    }
    for confirm in confirms {
        confirm.await.unwrap();
    }

    set("starting the read_committed reader and the first worker".into());
    let committed: Tally = Tally::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_into(
        kafka_url(),
        output.clone(),
        committed.clone(),
        stop.clone(),
    ));
    let id = format!("mr-eos-worker-{run}");
    let mut worker = Worker::start(&id, &input, &output);
    let mut killed_at = Vec::new();
    for k in 1..=KILLS {
        let threshold = INPUTS * k / (KILLS + 1);
        set(format!(
            "waiting for {threshold} outputs before kill {k} (seen {})",
            distinct(&committed)
        ));
        while distinct(&committed) < threshold {
            worker.check_alive();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The reader has just seen a commit: half a commit interval later the worker is inside
        // its next transaction with some of its outputs in the log, where a kill must not leak
        // them.
        tokio::time::sleep(Duration::from_millis(25)).await;
        worker.kill();
        killed_at.push(distinct(&committed));
        worker = Worker::start(&id, &input, &output);
    }

    set("waiting for every output after the last restart".into());
    while distinct(&committed) < INPUTS {
        worker.check_alive();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_seen = started.elapsed();
    set("watching for late duplicates".into());
    tokio::time::sleep(QUIET).await;
    worker.kill();
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap().unwrap();

    set("counting with a read_uncommitted reader".into());
    let uncommitted: Tally = Tally::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_into(
        url_with("isolation.level=read_uncommitted"),
        output.clone(),
        uncommitted.clone(),
        stop.clone(),
    ));
    // Everything committed is in the log; aborted writes come on top.
    while uncommitted.lock().unwrap().values().sum::<usize>() < INPUTS {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap().unwrap();

    let committed = committed.lock().unwrap().clone();
    let total: usize = committed.values().sum();
    let duplicates: usize = committed.values().map(|n| n - 1).sum();
    let missing: Vec<usize> = (0..INPUTS)
        .filter(|i| !committed.contains_key(&format!("out-{i}")))
        .collect();
    let unexpected: Vec<&String> = committed
        .keys()
        .filter(|k| {
            k.strip_prefix("out-")
                .and_then(|n| n.parse::<usize>().ok())
                .is_none_or(|n| n >= INPUTS)
        })
        .collect();
    let in_log: usize = uncommitted.lock().unwrap().values().sum();
    println!(
        "exactly-once under SIGKILL: inputs {INPUTS}, kills {} (at {:?} outputs seen), \
         read_committed outputs {total}, distinct {}, duplicates {duplicates}, missing {}; \
         records in the log (read_uncommitted) {in_log}, of which from aborted transactions {}; \
         all outputs seen after {:.1} s, test {:.1} s",
        killed_at.len(),
        killed_at,
        committed.len(),
        missing.len(),
        in_log.saturating_sub(total),
        all_seen.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(killed_at.len(), KILLS);
    assert!(
        killed_at.iter().all(|seen| *seen < INPUTS),
        "every kill landed before the run was over: {killed_at:?}"
    );
    assert!(
        missing.is_empty(),
        "missing outputs: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert_eq!(duplicates, 0, "outputs seen more than once");
    // Without this the run could have been killed only between transactions, and proven
    // nothing about the aborted ones.
    assert!(
        in_log > total,
        "no kill left an open transaction with outputs in the log ({in_log} records)"
    );
    assert!(unexpected.is_empty(), "unexpected outputs: {unexpected:?}");
}

/// A short unique suffix for this run's topics and ids.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{}", nanos, std::process::id())
}
