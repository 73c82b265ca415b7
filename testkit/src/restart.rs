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
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, Consumer, ConsumerOptions, Destination, Error, ErrorKind, Message, MessageId,
    QueueSpec, Result,
};

use crate::{check_failed, Tally, Waypoints};

/// What a broker keeps across a restart, as its [`RestartHook`] declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Queues and the messages they hold survive a restart: every message sent must arrive.
    QueuesAndMessages,
    /// Nothing survives (an in-memory server): the scenario declares the queue again after each
    /// restart, and only messages sent after the last restart must arrive. What the run checks
    /// on such a broker is the weaker property: every send and receive succeeds or fails with a
    /// typed error in bounded time, and the same backend works again after the restart.
    Nothing,
}

/// Stops and starts the broker under test. The calls block (they run commands or kill
/// processes); the scenario makes them on a blocking thread.
pub trait RestartHook: Send + Sync + 'static {
    /// What the broker keeps across a restart.
    fn retention(&self) -> Retention;
    /// Stop (or kill) the broker; returns once it no longer serves.
    fn stop(&self) -> std::result::Result<(), String>;
    /// Start the broker again; returns once it serves.
    fn start(&self) -> std::result::Result<(), String>;
}

/// One failed operation of a run.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `send` (an enqueue or its confirm), `re-send`, `receive` or `open consumer`.
    pub operation: &'static str,
    /// The error's kind.
    pub kind: ErrorKind,
    /// Whether the error said trying again may work.
    pub temporary: bool,
    /// How long the operation took to fail.
    pub took: Duration,
}

impl Failure {
    /// Whether this is a failure a restart explains: a temporary error, or the queue (and so a
    /// consumer of it) gone with a broker that keeps nothing.
    pub fn expected(&self) -> bool {
        self.temporary || matches!(self.kind, ErrorKind::NotFound | ErrorKind::Closed)
    }
}

/// What one run saw.
#[derive(Debug, Clone)]
pub struct RestartReport {
    /// What the hook declared the broker keeps.
    pub retention: Retention,
    /// Messages sent (each distinct).
    pub messages: usize,
    /// Messages that had to arrive: all of them on a broker that keeps messages; on one that
    /// keeps nothing, those sent after the last restart and the re-sent ones.
    pub required: usize,
    /// Deliveries received, duplicates included.
    pub deliveries: usize,
    /// Deliveries of a message already received.
    pub duplicates: usize,
    /// Required messages never received.
    pub lost: usize,
    /// Messages confirmed before a restart of a broker that keeps nothing, and never received:
    /// the broker's loss, declared by its [`Retention`], not the client's.
    pub lost_to_restart: usize,
    /// Messages whose send failed and that the scenario sent again.
    pub resent: usize,
    /// Failed sends whose error did not hand the message back (the contract says it must).
    pub unreturned: usize,
    /// Acks that failed (the broker redelivers those, or the restart dropped them).
    pub failed_acks: usize,
    /// Every failed send, re-send, receive and consumer open, in the order seen.
    pub failures: Vec<Failure>,
    /// The longest any send took, from its enqueue to its confirm or error.
    pub slowest_send: Duration,
    /// Per restart: from the broker serving again until both the producer and the consumer
    /// made progress.
    pub recoveries: Vec<Duration>,
    /// Restarts whose stop and start both succeeded.
    pub restarts_done: usize,
    /// What the hook reported when a stop or start failed.
    pub hook_errors: Vec<String>,
    /// The whole run.
    pub elapsed: Duration,
}

impl RestartReport {
    /// The longest recovery of this run.
    pub fn longest_recovery(&self) -> Duration {
        self.recoveries.iter().copied().max().unwrap_or_default()
    }

    /// Failures of one operation (`send`, `re-send`, `receive`, `open consumer`).
    pub fn failures_of(&self, operation: &str) -> usize {
        self.failures
            .iter()
            .filter(|f| f.operation == operation)
            .count()
    }

    /// Failures a restart does not explain (see [`Failure::expected`]).
    pub fn unexpected_failures(&self) -> Vec<&Failure> {
        self.failures.iter().filter(|f| !f.expected()).collect()
    }

    /// The longest any failed operation took to fail.
    pub fn slowest_failure(&self) -> Duration {
        self.failures
            .iter()
            .map(|f| f.took)
            .max()
            .unwrap_or_default()
    }
}

impl fmt::Display for RestartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent in {:.1?} ({:?}); {} restarts, recovered in {:?}; {} required, {} deliveries, \
             {} duplicates, {} lost, {} lost to the restart; {} re-sent; {} failed sends, {} \
             failed receives (slowest failure {:.2?}, slowest send {:.2?}); {} acks failed",
            self.messages,
            self.elapsed,
            self.retention,
            self.restarts_done,
            self.recoveries,
            self.required,
            self.deliveries,
            self.duplicates,
            self.lost,
            self.lost_to_restart,
            self.resent,
            self.failures_of("send") + self.failures_of("re-send"),
            self.failures_of("receive"),
            self.slowest_failure(),
            self.slowest_send,
            self.failed_acks
        )
    }
}

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
const RETRY: Duration = Duration::from_millis(500);

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

/// The consumer: acks everything until every required message arrived (or `deadline`). A
/// failed receive is recorded and retried; one that says the queue or the consumer is gone
/// (a broker that kept nothing) opens a new consumer, as an application would.
async fn consume(
    backend: Arc<dyn Backend>,
    queue: String,
    progress: Arc<Progress>,
    waypoints: Waypoints,
    deadline: Instant,
) -> Result<usize> {
    waypoints.at("consumer", "opening");
    let mut c = backend.consumer(&queue, ConsumerOptions::default()).await?;
    let mut failed_acks = 0usize;
    let mut checked = Instant::now();
    while Instant::now() < deadline {
        if checked.elapsed() > Duration::from_millis(250) {
            checked = Instant::now();
            if progress.all_required_received() {
                break;
            }
        }
        waypoints.at("consumer", "receive_timeout");
        let at = Instant::now();
        match c.receive_timeout(Duration::from_secs(1)).await {
            Ok(Some(d)) => {
                lock(&progress.tally).record(d.message().id());
                waypoints.at("consumer", format!("ack of {}", d.message().id()));
                if d.ack().await.is_err() {
                    failed_acks += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let gone = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Closed);
                lock(&progress.failures).push(Failure::of("receive", &e, at.elapsed()));
                tokio::time::sleep(RETRY).await;
                if gone {
                    waypoints.at("consumer", "opening a new consumer");
                    c = reopen(&backend, &queue, c, &progress, deadline).await?;
                }
            }
        }
    }
    waypoints.at("consumer", "close");
    c.close().await?;
    waypoints.at("consumer", "done");
    Ok(failed_acks)
}

async fn reopen(
    backend: &Arc<dyn Backend>,
    queue: &str,
    mut old: Box<dyn Consumer>,
    progress: &Progress,
    deadline: Instant,
) -> Result<Box<dyn Consumer>> {
    // The old consumer is finished; its close may fail like its receive did.
    let _ = tokio::time::timeout(Duration::from_secs(10), old.close()).await;
    loop {
        let at = Instant::now();
        match backend.consumer(queue, ConsumerOptions::default()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                lock(&progress.failures).push(Failure::of("open consumer", &e, at.elapsed()));
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Stops and starts the broker through the hook, and starts it again on drop if a run ended
/// (failed, timed out) while it was stopped, so the broker is never left down.
struct Restarter {
    hook: Arc<dyn RestartHook>,
    stopped: AtomicBool,
}

impl Restarter {
    fn stop(&self) -> std::result::Result<(), String> {
        self.stopped.store(true, Ordering::SeqCst);
        self.hook.stop()
    }

    fn start(&self) -> std::result::Result<(), String> {
        self.hook.start()?;
        self.stopped.store(false, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Restarter {
    fn drop(&mut self) {
        if self.stopped.load(Ordering::SeqCst) {
            for _ in 0..5 {
                if self.hook.start().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// What the tasks of one run share.
#[derive(Default)]
struct Progress {
    enqueued: AtomicUsize,
    restarts_over: AtomicBool,
    tally: Mutex<Tally>,
    failures: Mutex<Vec<Failure>>,
    returned: Mutex<Vec<Message>>,
    unreturned: AtomicUsize,
    confirmed_before: Mutex<Vec<MessageId>>,
    confirmed_after: Mutex<Vec<MessageId>>,
    required: Mutex<Option<HashSet<MessageId>>>,
    slowest_send: Mutex<Duration>,
}

impl Progress {
    fn sent(&self, took: Duration) {
        let mut slowest = lock(&self.slowest_send);
        *slowest = (*slowest).max(took);
    }

    fn send_failed(&self, mut e: Error, m: Message, took: Duration) {
        lock(&self.failures).push(Failure::of("send", &e, took));
        let back = e.take_undelivered().unwrap_or_else(|| {
            self.unreturned.fetch_add(1, Ordering::SeqCst);
            m
        });
        lock(&self.returned).push(back);
    }

    fn all_required_received(&self) -> bool {
        let required = lock(&self.required);
        let tally = lock(&self.tally);
        required
            .as_ref()
            .is_some_and(|r| r.iter().all(|id| tally.contains(id)))
    }
}

impl Failure {
    fn of(operation: &'static str, e: &Error, took: Duration) -> Failure {
        Failure {
            operation,
            kind: e.kind(),
            temporary: e.is_temporary(),
            took,
        }
    }
}

/// A poisoned lock only means another task panicked; the data is still what it counted.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
