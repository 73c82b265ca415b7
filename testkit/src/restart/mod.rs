//! The broker-restart scenario: N messages sent and consumed while the broker is stopped and
//! started twice (at about one third and one half of the sends), written once for every backend
//! that can restart its broker. The backend's test supplies a [`RestartHook`] that stops and starts
//! the broker, and declares what the broker keeps across a restart ([`Retention`]); the scenario
//! decides from that which messages must arrive.
//!
//! The application side is at-least-once: a send whose enqueue or confirm fails hands its message
//! back, and the scenario sends it again once the restarts are over; the consumer acks everything
//! and counts duplicates (re-sends of unconfirmed messages, redeliveries of unacked ones). Every
//! failed operation is recorded with its error kind and how long it took to fail, and each
//! restart's recovery (until both the producer and the consumer made progress again) is timed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{Backend, Destination, Message, MessageId, QueueSpec, Result};

use crate::{check_failed, Waypoints};

mod consume;
mod hook;
mod local;
mod progress;
mod report;

pub use hook::{RestartHook, Retention};
pub use local::LocalRestart;
pub use report::{Failure, RestartReport};

use consume::consume;
use hook::Restarter;
use progress::{lock, Progress};

/// The scenario's parameters; [`RestartScenario::run`] runs it against one backend.
#[derive(Debug, Clone)]
pub struct RestartScenario {
    messages: usize,
    down: Duration,
    recovery_bound: Duration,
    run_bound: Duration,
}

/// Sends per pacing step; the pause between steps spreads a 10,000-message run over ~10 s so
/// the restarts land in the middle of it.
const STEP: usize = 100;
const PAUSE: Duration = Duration::from_millis(100);
/// After a failed send, as an application backs off before the next one.
const BACKOFF: Duration = Duration::from_millis(100);
/// After a failed receive or re-send.
pub(super) const RETRY: Duration = Duration::from_millis(500);

impl RestartScenario {
    /// `messages` sends across two restarts; the broker stays down 2 s each time, each restart
    /// must be recovered from within 90 s and the whole run must end within 240 s.
    pub fn new(messages: usize) -> Self {
        RestartScenario {
            messages,
            down: Duration::from_secs(2),
            recovery_bound: Duration::from_secs(90),
            run_bound: Duration::from_secs(240),
        }
    }

    /// How long the broker stays stopped each time.
    pub fn down(mut self, down: Duration) -> Self {
        self.down = down;
        self
    }

    /// How long the clients may take to make progress again after a restart.
    pub fn recovery_bound(mut self, bound: Duration) -> Self {
        self.recovery_bound = bound;
        self
    }

    /// How long the whole run may take: one that takes longer is hanging.
    pub fn run_bound(mut self, bound: Duration) -> Self {
        self.run_bound = bound;
        self
    }

    /// Run the scenario on `backend` (closed at the end), restarting its broker with `hook`.
    /// An error is a run that could not be carried out (setup failed, a recovery or the whole
    /// run took longer than its bound, naming the step each task was waiting in); what the run
    /// saw, losses included, is in the report for the caller to judge.
    pub async fn run(
        &self,
        backend: Arc<dyn Backend>,
        hook: Arc<dyn RestartHook>,
    ) -> Result<RestartReport> {
        let restarter = Arc::new(Restarter {
            hook,
            stopped: AtomicBool::new(false),
        });
        let waypoints = Waypoints::default();
        let run = tokio::time::timeout(
            self.run_bound,
            self.run_inner(backend, &restarter, &waypoints),
        )
        .await;
        drop(restarter);
        match run {
            Ok(report) => report,
            Err(_) => Err(check_failed(format!(
                "the restart scenario did not finish within {:?}; it was waiting in: {}",
                self.run_bound,
                waypoints.report()
            ))),
        }
    }

    async fn run_inner(
        &self,
        backend: Arc<dyn Backend>,
        restarter: &Arc<Restarter>,
        waypoints: &Waypoints,
    ) -> Result<RestartReport> {
        let n = self.messages;
        let retention = restarter.hook.retention();
        let started = Instant::now();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let q = format!("mr-restart-{}", &id[..12]);
        waypoints.at("main", "declaring the queue");
        backend
            .topology()
            .declare_queue(&QueueSpec::new(&q))
            .await?;
        let sent = (0..n)
            .map(|i| {
                Message::builder(format!("restart-{i}"))
                    .header("seq", i.to_string())
                    .build()
            })
            .collect::<Result<Vec<Message>>>()?;
        let progress = Arc::new(Progress::default());

        let consumer_task = tokio::spawn(consume(
            backend.clone(),
            q.clone(),
            progress.clone(),
            waypoints.clone(),
            started + self.run_bound * 4 / 5,
        ));
        let faults_task = tokio::spawn(self.clone().inject(
            backend.clone(),
            q.clone(),
            restarter.clone(),
            progress.clone(),
            waypoints.clone(),
        ));

        waypoints.at("main", "opening the producer");
        let producer = backend.producer().await?;
        let dest = Destination::queue(&q);
        let mut confirms = Vec::with_capacity(n);
        for (i, m) in sent.iter().enumerate() {
            waypoints.at("main", format!("enqueue of message {i}"));
            let after_restarts = progress.restarts_over.load(Ordering::SeqCst);
            let enqueued_at = Instant::now();
            match producer.enqueue(&dest, m.clone()).await {
                Ok(confirm) => {
                    let (progress, m) = (progress.clone(), m.clone());
                    confirms.push(tokio::spawn(async move {
                        let result = confirm.await;
                        progress.sent(enqueued_at.elapsed());
                        match result {
                            Ok(_) if after_restarts => {
                                lock(&progress.confirmed_after).push(m.id().clone())
                            }
                            Ok(_) => lock(&progress.confirmed_before).push(m.id().clone()),
                            Err(e) => progress.send_failed(e, m, enqueued_at.elapsed()),
                        }
                    }));
                }
                Err(e) => {
                    progress.sent(enqueued_at.elapsed());
                    progress.send_failed(e, m.clone(), enqueued_at.elapsed());
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            progress.enqueued.fetch_add(1, Ordering::SeqCst);
            if i % STEP == STEP - 1 {
                tokio::time::sleep(PAUSE).await;
            }
        }
        waypoints.at("main", "waiting for every confirm");
        for confirm in confirms {
            confirm
                .await
                .map_err(|e| check_failed(format!("a confirm task failed: {e}")))?;
        }
        waypoints.at("main", "waiting for the restarts to be over");
        let (recoveries, restarts_done, hook_errors) = faults_task
            .await
            .map_err(|e| check_failed(format!("the fault task failed: {e}")))??;
        // At-least-once on the application side: whatever came back in an error is sent again,
        // now that the broker stays up.
        let retried = std::mem::take(&mut *lock(&progress.returned));
        let resent = retried.len();
        let mut resent_ids = Vec::with_capacity(resent);
        for mut m in retried {
            waypoints.at("main", format!("re-send of {}", m.id()));
            loop {
                let at = Instant::now();
                match producer.send(&dest, m.clone()).await {
                    Ok(_) => break,
                    Err(mut e) => {
                        m = e.take_undelivered().unwrap_or(m);
                        lock(&progress.failures).push(Failure::of("re-send", &e, at.elapsed()));
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
            resent_ids.push(m.id().clone());
        }
        waypoints.at("main", "closing the producer");
        producer.close().await?;

        let required: HashSet<MessageId> = match retention {
            Retention::QueuesAndMessages => sent.iter().map(|m| m.id().clone()).collect(),
            Retention::Nothing => lock(&progress.confirmed_after)
                .iter()
                .chain(&resent_ids)
                .cloned()
                .collect(),
        };
        let required_count = required.len();
        *lock(&progress.required) = Some(required.clone());
        waypoints.at("main", "waiting for the consumer task");
        let failed_acks = consumer_task
            .await
            .map_err(|e| check_failed(format!("the consumer task failed: {e}")))??;

        let tally = lock(&progress.tally).clone();
        let lost = tally.missing(required.iter()).len();
        let lost_to_restart = match retention {
            Retention::QueuesAndMessages => 0,
            Retention::Nothing => {
                let before = lock(&progress.confirmed_before).clone();
                before
                    .iter()
                    .filter(|id| !required.contains(*id) && !tally.contains(id))
                    .count()
            }
        };
        waypoints.at("main", "cleaning up");
        let _ = backend.topology().delete_queue(&q).await;
        backend.close().await?;
        let failures = lock(&progress.failures).clone();
        let slowest_send = *lock(&progress.slowest_send);
        Ok(RestartReport {
            retention,
            messages: n,
            required: required_count,
            deliveries: tally.deliveries(),
            duplicates: tally.duplicates(),
            lost,
            lost_to_restart,
            resent,
            unreturned: progress.unreturned.load(Ordering::SeqCst),
            failed_acks,
            failures,
            slowest_send,
            recoveries,
            restarts_done,
            hook_errors,
            elapsed: started.elapsed(),
        })
    }

    /// The fault injector: a restart at about 1/3 and at 1/2 of the sends; after each, the queue
    /// is declared again where the broker keeps nothing, and the clients must make progress
    /// again within the recovery bound.
    async fn inject(
        self,
        backend: Arc<dyn Backend>,
        queue: String,
        restarter: Arc<Restarter>,
        progress: Arc<Progress>,
        waypoints: Waypoints,
    ) -> Result<(Vec<Duration>, usize, Vec<String>)> {
        let n = self.messages;
        let points = [n / 3, n / 2];
        let mut recoveries = Vec::new();
        let mut done = 0;
        let mut hook_errors = Vec::new();
        for (k, at) in points.into_iter().enumerate() {
            waypoints.at("faults", format!("waiting for {at} sends"));
            while progress.enqueued.load(Ordering::SeqCst) < at {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            waypoints.at("faults", "stopping the broker");
            let r = restarter.clone();
            let stopped = tokio::task::spawn_blocking(move || r.stop())
                .await
                .map_err(|e| check_failed(format!("the stop hook failed: {e}")))?;
            tokio::time::sleep(self.down).await;
            waypoints.at("faults", "starting the broker");
            let r = restarter.clone();
            let started = tokio::task::spawn_blocking(move || r.start())
                .await
                .map_err(|e| check_failed(format!("the start hook failed: {e}")))?;
            match (stopped, started) {
                (Ok(()), Ok(())) => done += 1,
                (stopped, started) => {
                    hook_errors.extend(stopped.err());
                    hook_errors.extend(started.err());
                }
            }
            let up = Instant::now();
            if restarter.hook.retention() == Retention::Nothing {
                waypoints.at("faults", "declaring the queue again");
                while let Err(e) = backend
                    .topology()
                    .declare_queue(&QueueSpec::new(&queue))
                    .await
                {
                    if up.elapsed() > self.recovery_bound {
                        return Err(check_failed(format!(
                            "the queue could not be declared again within {:?} of the restart: {e}",
                            self.recovery_bound
                        )));
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
            if k == points.len() - 1 {
                progress.restarts_over.store(true, Ordering::SeqCst);
            }
            let sends = progress.enqueued.load(Ordering::SeqCst);
            let deliveries = lock(&progress.tally).deliveries();
            waypoints.at("faults", "waiting for the clients to recover");
            loop {
                let producing = progress.enqueued.load(Ordering::SeqCst) > sends || sends == n;
                let consuming = lock(&progress.tally).deliveries() > deliveries;
                if producing && consuming {
                    recoveries.push(up.elapsed());
                    break;
                }
                if up.elapsed() > self.recovery_bound {
                    return Err(check_failed(format!(
                        "no recovery {:?} after restart {} (producing {producing}, consuming \
                         {consuming}); waiting in: {}",
                        self.recovery_bound,
                        k + 1,
                        waypoints.report()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        waypoints.at("faults", "done");
        Ok((recoveries, done, hook_errors))
    }
}
