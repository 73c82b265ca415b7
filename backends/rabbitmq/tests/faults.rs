//! The broker restarts twice in the middle of a 10,000-message run; nothing is lost.
//!
//! `rabbitmqctl stop_app` / `start_app` at about one third and one half of the sends. Every
//! message must be received at least once; duplicates (re-sends of unconfirmed messages,
//! redeliveries of unacked ones) are counted and reported.
//!
//! It stops the shared broker, so it is `#[ignore]`d in a plain `cargo test` (other test
//! binaries may be using RabbitMQ at the same moment) and run on its own by scripts/test.sh:
//! `cargo test -p mailroom-rabbitmq --test faults -- --ignored --nocapture`.
//! A drop guard always runs `start_app`, so the broker is left running even if the test fails.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_core::testkit::Tally;
use mailroom_core::{Backend, ConsumerOptions, Destination, Message, QueueSpec};
use mailroom_rabbitmq::RabbitBackend;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?reconnect_timeout_ms=90000";
const N: usize = 10_000;
/// Sends per pacing step; the pause between steps spreads the run over ~10 s so the restarts
/// land in the middle of it.
const STEP: usize = 100;
const PAUSE: Duration = Duration::from_millis(100);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the shared RabbitMQ: run alone with --ignored (scripts/test.sh does)"]
async fn ten_thousand_messages_survive_two_broker_restarts() {
    let guard = Arc::new(RestartGuard {
        stopped: AtomicBool::new(false),
    });
    let start = Instant::now();
    let backend = Arc::new(RabbitBackend::from_url(URL).await.unwrap());
    let q = format!(
        "mr-faults-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let sent: Vec<Message> = (0..N)
        .map(|i| {
            Message::builder(format!("fault-{i}"))
                .header("seq", i.to_string())
                .build()
                .unwrap()
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
        tokio::spawn(async move {
            let mut c = backend.consumer(&q, ConsumerOptions::default()).await?;
            let mut failed_acks = 0usize;
            let deadline = Instant::now() + Duration::from_secs(150);
            while tally.lock().unwrap().unique() < N && Instant::now() < deadline {
                if let Some(d) = c.receive_timeout(Duration::from_secs(1)).await? {
                    tally.lock().unwrap().record(d.message().id());
                    if d.ack().await.is_err() {
                        failed_acks += 1;
                    }
                }
            }
            c.close().await?;
            Ok::<_, mailroom_core::Error>(failed_acks)
        })
    };

    // The fault injector: two restarts, at about 1/3 and 1/2 of the sends.
    let faults_task = {
        let guard = guard.clone();
        let enqueued = enqueued.clone();
        tokio::spawn(async move {
            let mut log = Vec::new();
            for at in [N / 3, N / 2] {
                while enqueued.load(Ordering::SeqCst) < at {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let g = guard.clone();
                let stopped = tokio::task::spawn_blocking(move || g.stop()).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
                let g = guard.clone();
                let started = tokio::task::spawn_blocking(move || g.start())
                    .await
                    .unwrap();
                log.push(format!(
                    "restart at {} enqueued (stop {stopped}, start {started})",
                    enqueued.load(Ordering::SeqCst)
                ));
            }
            log
        })
    };

    let producer = backend.producer().await.unwrap();
    let dest = Destination::queue(&q);
    let mut pending = Vec::with_capacity(N);
    let mut retried = Vec::new();
    for (i, m) in sent.iter().enumerate() {
        match producer.enqueue(&dest, m.clone()).await {
            Ok(p) => pending.push(p),
            Err(mut e) => {
                eprintln!("enqueue {i} failed: {e}");
                retried.push(e.take_undelivered().unwrap());
            }
        }
        enqueued.fetch_add(1, Ordering::SeqCst);
        if i % STEP == STEP - 1 {
            tokio::time::sleep(PAUSE).await;
        }
    }
    let mut confirm_errors = 0;
    for p in pending {
        if let Err(mut e) = p.await {
            confirm_errors += 1;
            eprintln!("confirm failed: {e}");
            retried.push(e.take_undelivered().unwrap());
        }
    }
    // At-least-once on the application side: whatever came back in an error is sent again.
    for m in retried.drain(..) {
        producer.send(&dest, m).await.unwrap();
    }
    producer.close().await.unwrap();

    let fault_log = faults_task.await.unwrap();
    let failed_acks = consumer_task.await.unwrap().unwrap();
    let tally = tally.lock().unwrap().clone();
    let ids: HashSet<_> = sent.iter().map(|m| m.id().clone()).collect();
    let missing = tally.missing(ids.iter());
    eprintln!(
        "faults: {N} sent in {:.1?}; {}; {tally}; {} missing; {confirm_errors} confirm errors \
         re-sent; {failed_acks} acks failed on a dead channel",
        start.elapsed(),
        fault_log.join("; "),
        missing.len()
    );
    assert_eq!(fault_log.len(), 2, "both restarts happened");
    assert!(missing.is_empty(), "{} messages lost", missing.len());
    let _ = backend.topology().delete_queue(&q).await;
    backend.close().await.unwrap();
    drop(guard);
}
