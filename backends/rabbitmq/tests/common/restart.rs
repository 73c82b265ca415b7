//! The broker-restart scenario: messages sent and consumed while RabbitMQ is stopped and
//! started twice (`rabbitmqctl stop_app` / `start_app`, at about one third and one half of the
//! sends). Every message must be received at least once; duplicates (re-sends of unconfirmed
//! messages, redeliveries of unacked ones) are counted, and so is how long each restart took to
//! recover from.
//!
//! tests/faults.rs runs it once, tests/restart_soak.rs many times in a row. It stops the shared
//! broker, so both are `#[ignore]`d and run alone. A drop guard always runs `start_app`, so the
//! broker is left running even when a run fails.

use std::collections::HashSet;
use std::fmt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_testkit::Tally;
use mailroom_core::{Backend, ConsumerOptions, Destination, Message, QueueSpec};
use mailroom_rabbitmq::RabbitBackend;

use super::{unique, within, Waypoints};

/// How long the backend keeps reconnecting; a restart must be over well within it.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(90);
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?reconnect_timeout_ms=90000";
/// Sends per pacing step; the pause between steps spreads a 10,000-message run over ~10 s so
/// the restarts land in the middle of it.
const STEP: usize = 100;
const PAUSE: Duration = Duration::from_millis(100);
/// How long the broker stays stopped.
const DOWN: Duration = Duration::from_secs(2);
/// Bound of one whole run: the sends, two restarts each recovered within the reconnect
/// timeout, and the drain, with room to spare. A run that takes longer is hanging.
const RUN_BOUND: Duration = Duration::from_secs(240);

/// What one run saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Messages sent (each distinct).
    pub messages: usize,
    /// Deliveries received, duplicates included.
    pub deliveries: usize,
    /// Deliveries of a message already received.
    pub duplicates: usize,
    /// Messages never received.
    pub lost: usize,
    /// Sends whose confirm failed and that the test sent again.
    pub resent: usize,
    /// Acks that failed because their channel died (the broker redelivers those).
    pub failed_acks: usize,
    /// Per restart: from `start_app` returning until both the producer and the consumer made
    /// progress again.
    pub recoveries: Vec<Duration>,
    /// Whether both restarts happened (stop_app and start_app succeeded).
    pub restarts_done: usize,
    /// The whole run.
    pub elapsed: Duration,
}

impl Outcome {
    /// The longest recovery of this run.
    pub fn longest_recovery(&self) -> Duration {
        self.recoveries.iter().copied().max().unwrap_or_default()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent in {:.1?}; {} restarts, recovered in {:?}; {} deliveries, {} duplicates, \
             {} lost; {} confirm errors re-sent; {} acks failed on a dead channel",
            self.messages,
            self.elapsed,
            self.restarts_done,
            self.recoveries,
            self.deliveries,
            self.duplicates,
            self.lost,
            self.resent,
            self.failed_acks
        )
    }
}

fn rabbitmqctl(arg: &str) -> bool {
    match Command::new("rabbitmqctl").arg(arg).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "rabbitmqctl {arg} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("rabbitmqctl {arg} could not run: {e}");
            false
        }
    }
}

/// Starts the broker's app again whenever it was stopped, including on panic.
struct RestartGuard {
    stopped: AtomicBool,
}

impl RestartGuard {
    fn stop(&self) -> bool {
        self.stopped.store(true, Ordering::SeqCst);
        rabbitmqctl("stop_app")
    }

    fn start(&self) -> bool {
        let ok = rabbitmqctl("start_app");
        if ok {
            self.stopped.store(false, Ordering::SeqCst);
        }
        ok
    }
}

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if self.stopped.load(Ordering::SeqCst) {
            for _ in 0..5 {
                if rabbitmqctl("start_app") {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// One run of `messages` sends across two restarts, bounded: a run that hangs panics, naming
/// the step each task was waiting in.
pub async fn run(messages: usize) -> Outcome {
    let guard = Arc::new(RestartGuard {
        stopped: AtomicBool::new(false),
    });
    let waypoints = Waypoints::default();
    let outcome = within(
        RUN_BOUND,
        &waypoints,
        run_inner(messages, &guard, &waypoints),
    )
    .await;
    drop(guard);
    outcome
}

async fn run_inner(n: usize, guard: &Arc<RestartGuard>, waypoints: &Waypoints) -> Outcome {
    let start = Instant::now();
    waypoints.at("main", "connecting");
    let backend = Arc::new(RabbitBackend::from_url(URL).await.expect("connect"));
    let q = unique("mr-faults");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .expect("declare the queue");
    let sent: Vec<Message> = (0..n)
        .map(|i| {
            Message::builder(format!("fault-{i}"))
                .header("seq", i.to_string())
                .build()
                .expect("a valid message")
        })
        .collect();
    let enqueued = Arc::new(AtomicUsize::new(0));

    // The consumer acks everything; an ack that fails because the connection went away means
    // the broker redelivers, which the tally counts as a duplicate.
    let tally = Arc::new(Mutex::new(Tally::new()));
    let consumer_task = {
        let backend = backend.clone();
        let tally = tally.clone();
        let q = q.clone();
        let waypoints = waypoints.clone();
        tokio::spawn(async move {
            waypoints.at("consumer", "opening");
            let mut c = backend.consumer(&q, ConsumerOptions::default()).await?;
            let mut failed_acks = 0usize;
            let deadline = Instant::now() + Duration::from_secs(150);
            while tally.lock().unwrap().unique() < n && Instant::now() < deadline {
                waypoints.at("consumer", "receive_timeout");
                if let Some(d) = c.receive_timeout(Duration::from_secs(1)).await? {
                    tally.lock().unwrap().record(d.message().id());
                    waypoints.at("consumer", format!("ack of {}", d.message().id()));
                    if d.ack().await.is_err() {
                        failed_acks += 1;
                    }
                }
            }
            waypoints.at("consumer", "close");
            c.close().await?;
            waypoints.at("consumer", "done");
            Ok::<_, mailroom_core::Error>(failed_acks)
        })
    };

    // The fault injector: two restarts, at about 1/3 and 1/2 of the sends; after each it
    // waits for the producer and the consumer to make progress again.
    let faults_task = {
        let guard = guard.clone();
        let enqueued = enqueued.clone();
        let tally = tally.clone();
        let waypoints = waypoints.clone();
        tokio::spawn(async move {
            let mut recoveries = Vec::new();
            let mut done = 0;
            for at in [n / 3, n / 2] {
                waypoints.at("faults", format!("waiting for {at} sends"));
                while enqueued.load(Ordering::SeqCst) < at {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                waypoints.at("faults", "stop_app");
                let g = guard.clone();
                let stopped = tokio::task::spawn_blocking(move || g.stop()).await.unwrap();
                tokio::time::sleep(DOWN).await;
                waypoints.at("faults", "start_app");
                let g = guard.clone();
                let started = tokio::task::spawn_blocking(move || g.start())
                    .await
                    .unwrap();
                if stopped && started {
                    done += 1;
                }
                let up = Instant::now();
                let sends = enqueued.load(Ordering::SeqCst);
                let deliveries = tally.lock().unwrap().deliveries();
                waypoints.at("faults", "waiting for the clients to recover");
                loop {
                    let producing = enqueued.load(Ordering::SeqCst) > sends || sends == n;
                    let consuming = tally.lock().unwrap().deliveries() > deliveries;
                    if producing && consuming {
                        recoveries.push(up.elapsed());
                        break;
                    }
                    if up.elapsed() > RECONNECT_TIMEOUT {
                        panic!(
                            "no recovery {RECONNECT_TIMEOUT:?} after the restart (producing \
                             {producing}, consuming {consuming}); waiting in: {}",
                            waypoints.report()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            waypoints.at("faults", "done");
            (recoveries, done)
        })
    };

    waypoints.at("main", "opening the producer");
    let producer = backend.producer().await.expect("producer");
    let dest = Destination::queue(&q);
    let mut pending = Vec::with_capacity(n);
    let mut retried = Vec::new();
    for (i, m) in sent.iter().enumerate() {
        waypoints.at("main", format!("enqueue of message {i}"));
        match producer.enqueue(&dest, m.clone()).await {
            Ok(p) => pending.push((i, p)),
            Err(mut e) => {
                eprintln!("enqueue {i} failed: {e}");
                retried.push(
                    e.take_undelivered()
                        .expect("a failed send hands the message back"),
                );
            }
        }
        enqueued.fetch_add(1, Ordering::SeqCst);
        if i % STEP == STEP - 1 {
            tokio::time::sleep(PAUSE).await;
        }
    }
    let mut resent = 0;
    for (i, p) in pending {
        waypoints.at("main", format!("confirm of message {i}"));
        if let Err(mut e) = p.await {
            eprintln!("confirm failed: {e}");
            retried.push(
                e.take_undelivered()
                    .expect("a failed send hands the message back"),
            );
        }
    }
    // At-least-once on the application side: whatever came back in an error is sent again.
    for m in retried.drain(..) {
        resent += 1;
        waypoints.at("main", format!("re-send of {}", m.id()));
        producer.send(&dest, m).await.expect("re-send");
    }
    waypoints.at("main", "closing the producer");
    producer.close().await.expect("producer close");

    waypoints.at("main", "waiting for the fault task");
    let (recoveries, restarts_done) = faults_task.await.expect("fault task");
    waypoints.at("main", "waiting for the consumer task");
    let failed_acks = consumer_task
        .await
        .expect("consumer task")
        .expect("consumer");
    let tally = tally.lock().unwrap().clone();
    let ids: HashSet<_> = sent.iter().map(|m| m.id().clone()).collect();
    let lost = tally.missing(ids.iter()).len();
    waypoints.at("main", "cleaning up");
    let _ = backend.topology().delete_queue(&q).await;
    backend.close().await.expect("backend close");
    Outcome {
        messages: n,
        deliveries: tally.deliveries(),
        duplicates: tally.duplicates(),
        lost,
        resent,
        failed_acks,
        recoveries,
        restarts_done,
        elapsed: start.elapsed(),
    }
}
