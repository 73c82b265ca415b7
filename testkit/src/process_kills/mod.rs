//! The process-kill scenario every networked backend runs: consumer *processes* SIGKILLed
//! mid-batch several times during a run, and a producer process SIGKILLed while messages are
//! unconfirmed. A killed consumer's unacked messages must reach the next one (every message
//! sent is received at least once, duplicates counted); every message a killed producer
//! reported as confirmed must be in the queue.
//!
//! The children are the test binary itself, run again with its role in the environment, so
//! `cargo test` always builds them. A backend's `tests/process_kills.rs` is a test without the
//! libtest harness (`harness = false` in its `Cargo.toml`) whose `main` calls [`main`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use mailroom_testkit::process_kills::{self, ProcessKillScenario};
//!
//! fn main() -> std::process::ExitCode {
//!     let connect: process_kills::Connect = Arc::new(|url: String| {
//!         Box::pin(async move {
//!             # let _ = url;
//!             # let backend: Arc<dyn mailroom_core::Backend> = todo!();
//!             Ok(backend)
//!         })
//!     });
//!     process_kills::main(connect, |c| ProcessKillScenario::new("amqp://localhost", c))
//! }
//! ```

mod child;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use mailroom_core::{Backend, ConsumerOptions, Destination, Message, QueueSpec, Result};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::{check_failed, Waypoints};
use child::Role;

/// Opens a backend from a URL (in the test and in its child processes).
pub type Connect =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Arc<dyn Backend>>> + Send + Sync>;

/// The scenario, bound to one broker URL.
pub struct ProcessKillScenario {
    url: String,
    connect: Connect,
    spec: Arc<dyn Fn(QueueSpec) -> QueueSpec + Send + Sync>,
    messages: usize,
    kills: usize,
    batch: u32,
    child_bound: Duration,
    quiet: Duration,
    overall: Duration,
    waypoints: Waypoints,
}

/// What the consumer-kill run saw.
#[derive(Debug, Default)]
pub struct ConsumerKillReport {
    /// Messages sent (all confirmed).
    pub sent: usize,
    /// Consumer processes killed.
    pub kills: usize,
    /// Distinct messages the consumer processes printed.
    pub received: usize,
    /// Deliveries of a message already printed (unacked when its consumer was killed).
    pub duplicates: usize,
    /// The whole run.
    pub took: Duration,
}

impl fmt::Display for ConsumerKillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "consumer kills: {} sent, {} consumer processes killed, {} received, {} duplicates, \
             {:?}",
            self.sent, self.kills, self.received, self.duplicates, self.took
        )
    }
}

/// What the producer-kill run saw.
#[derive(Debug, Default)]
pub struct ProducerKillReport {
    /// Messages the killed producer reported as confirmed.
    pub reported: usize,
    /// Distinct messages found in the queue afterwards.
    pub found: usize,
    /// Found though not reported (sent, and their confirm still in flight at the kill).
    pub unreported_found: usize,
    /// Deliveries of a message already found.
    pub duplicates: usize,
    /// The whole run.
    pub took: Duration,
}

impl fmt::Display for ProducerKillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "producer kill: {} reported confirmed, {} found ({} of them unreported), {} \
             duplicates, {:?}",
            self.reported, self.found, self.unreported_found, self.duplicates, self.took
        )
    }
}

impl ProcessKillScenario {
    /// The scenario against `url`, opened with `connect`: 600 messages, 3 consumer kills,
    /// batches of 50, each child given 60 s to get going, 3 s of quiet before the duplicates are
    /// counted.
    pub fn new(url: &str, connect: Connect) -> ProcessKillScenario {
        ProcessKillScenario {
            url: url.to_owned(),
            connect,
            spec: Arc::new(|s| s),
            messages: 600,
            kills: 3,
            batch: 50,
            child_bound: Duration::from_secs(60),
            quiet: Duration::from_secs(3),
            overall: Duration::from_secs(240),
            waypoints: Waypoints::default(),
        }
    }

    /// Adjust the queue declaration (e.g. a short visibility timeout on SQS).
    pub fn queue_spec(
        mut self,
        f: impl Fn(QueueSpec) -> QueueSpec + Send + Sync + 'static,
    ) -> Self {
        self.spec = Arc::new(f);
        self
    }

    /// How many consumer processes are killed (at least 3 is the point).
    pub fn kills(mut self, kills: usize) -> Self {
        self.kills = kills;
        self
    }

    /// How long one child may take to print what the scenario waits for.
    pub fn child_bound(mut self, bound: Duration) -> Self {
        self.child_bound = bound;
        self
    }

    /// How long the last consumer process must print nothing before the duplicates are
    /// counted (longer than the time a killed consumer's messages take to come back).
    pub fn quiet(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// The bound on each run as a whole; running out fails it naming the step it was in
    /// (default 240 s).
    pub fn overall(mut self, overall: Duration) -> Self {
        self.overall = overall;
        self
    }

    fn at(&self, what: impl Into<String>) {
        self.waypoints.at("run", what);
    }

    async fn declare(&self, what: &str) -> Result<(Arc<dyn Backend>, String)> {
        let backend = (self.connect)(self.url.clone()).await?;
        let queue = format!(
            "mr-kill-{what}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        backend
            .topology()
            .declare_queue(&(self.spec)(QueueSpec::new(&queue)))
            .await?;
        Ok((backend, queue))
    }

    fn child(&self, role: &str, queue: &str) -> Result<Running> {
        let exe = std::env::current_exe()
            .map_err(|e| check_failed(format!("the test binary's path: {e}")))?;
        let mut child = Command::new(exe)
            .env(child::ROLE, role)
            .env(child::URL, &self.url)
            .env(child::QUEUE, queue)
            .env(child::BATCH, self.batch.to_string())
            .env(child::PREFIX, "p")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| check_failed(format!("starting a {role} child: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| check_failed("the child's stdout"))?;
        Ok(Running {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Send the messages, then run consumer processes one after another, killing each of the
    /// first `kills` once it printed its share; the last one must print every message.
    pub async fn consumer_kills(&self) -> Result<ConsumerKillReport> {
        let started = Instant::now();
        self.at("declare the queue and send the messages");
        let (backend, queue) = self.declare("consumer").await?;
        let producer = backend.producer().await?;
        let dest = Destination::queue(&queue);
        let mut pending = Vec::with_capacity(self.messages);
        let mut sent = HashSet::new();
        for n in 0..self.messages {
            let payload = format!("m{n}");
            pending.push(
                producer
                    .enqueue(&dest, Message::new(payload.clone()))
                    .await?,
            );
            sent.insert(payload);
        }
        for confirm in pending {
            confirm.await?;
        }
        producer.close().await?;

        let mut seen: HashMap<String, usize> = HashMap::new();
        let share = self.messages / (self.kills + 2);
        for k in 1..=self.kills {
            self.at(format!("consumer process {k} of {}", self.kills + 1));
            let mut running = self.child("consume", &queue)?;
            let mut printed = 0;
            while printed < share {
                let line = running
                    .next(
                        self.child_bound,
                        &format!("consumer process {k} (printed {printed})"),
                    )
                    .await?;
                if let Some(payload) = line.strip_prefix(child::RECEIVED) {
                    *seen.entry(payload.to_owned()).or_default() += 1;
                    printed += 1;
                }
            }
            // Mid-batch: the child holds what it printed for a while before acking it.
            for payload in running.kill().await? {
                if let Some(payload) = payload.strip_prefix(child::RECEIVED) {
                    *seen.entry(payload.to_owned()).or_default() += 1;
                }
            }
        }
        self.at("the last consumer process");
        let mut last = self.child("consume", &queue)?;
        while !sent.iter().all(|p| seen.contains_key(p)) {
            let missing = sent.iter().filter(|p| !seen.contains_key(*p)).count();
            let line = last
                .next(
                    self.child_bound,
                    &format!("the last consumer process ({missing} message(s) never printed)"),
                )
                .await?;
            if let Some(payload) = line.strip_prefix(child::RECEIVED) {
                *seen.entry(payload.to_owned()).or_default() += 1;
            }
        }
        // What a killed process held comes back later on some brokers (SQS: after the
        // visibility timeout): keep counting until the last process is quiet for a while.
        while let Ok(line) = last.next(self.quiet, "the last consumer process").await {
            if let Some(payload) = line.strip_prefix(child::RECEIVED) {
                *seen.entry(payload.to_owned()).or_default() += 1;
            }
        }
        for payload in last.kill().await? {
            if let Some(payload) = payload.strip_prefix(child::RECEIVED) {
                *seen.entry(payload.to_owned()).or_default() += 1;
            }
        }
        let _ = backend.topology().delete_queue(&queue).await;
        let _ = backend.close().await;
        Ok(ConsumerKillReport {
            sent: sent.len(),
            kills: self.kills,
            received: seen.keys().filter(|p| sent.contains(*p)).count(),
            duplicates: seen.values().map(|n| n - 1).sum(),
            took: started.elapsed(),
        })
    }

    /// Run a producer process until it reported `messages / 3` confirms, kill it, then find
    /// every reported message in the queue.
    pub async fn producer_kill(&self) -> Result<ProducerKillReport> {
        let started = Instant::now();
        self.at("declare the queue");
        let (backend, queue) = self.declare("producer").await?;
        self.at("the producer process");
        let mut running = self.child("produce", &queue)?;
        let mut reported = HashSet::new();
        while reported.len() < self.messages / 3 {
            let line = running
                .next(
                    self.child_bound,
                    &format!("the producer process ({} confirmed)", reported.len()),
                )
                .await?;
            if let Some(payload) = line.strip_prefix(child::CONFIRMED) {
                reported.insert(payload.to_owned());
            }
        }
        for line in running.kill().await? {
            if let Some(payload) = line.strip_prefix(child::CONFIRMED) {
                reported.insert(payload.to_owned());
            }
        }
        self.at("find every reported message in the queue");
        let mut consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
        let mut found: HashMap<String, usize> = HashMap::new();
        let deadline = Instant::now() + self.child_bound;
        loop {
            let missing = reported.iter().filter(|p| !found.contains_key(*p)).count();
            // Once every reported message is found, a short quiet spell ends the count of the
            // unreported ones too.
            let wait = if missing == 0 {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(5)
            };
            if Instant::now() > deadline {
                return Err(check_failed(format!(
                    "{missing} of the {} messages the killed producer reported as confirmed are \
                     not in the queue after {:?}",
                    reported.len(),
                    self.child_bound
                )));
            }
            match consumer.receive_timeout(wait).await? {
                Some(d) => {
                    *found
                        .entry(String::from_utf8_lossy(d.message().payload()).into_owned())
                        .or_default() += 1;
                    d.ack().await?;
                }
                None if missing == 0 => break,
                None => {}
            }
        }
        let _ = consumer.close().await;
        let _ = backend.topology().delete_queue(&queue).await;
        let _ = backend.close().await;
        Ok(ProducerKillReport {
            reported: reported.len(),
            found: found.len(),
            unreported_found: found.keys().filter(|p| !reported.contains(*p)).count(),
            duplicates: found.values().map(|n| n - 1).sum(),
            took: started.elapsed(),
        })
    }
}

impl ProcessKillScenario {
    /// `run` within the overall bound; running out names the step it was in.
    async fn bounded<T>(&self, run: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.overall, run).await {
            Ok(result) => result,
            Err(_) => Err(check_failed(format!(
                "did not finish within {:?}; it was waiting in: {}",
                self.overall,
                self.waypoints.report()
            ))),
        }
    }
}

/// A child process and the lines it prints.
struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    /// Its next line, within `bound`; the error names `what` was awaited.
    async fn next(&mut self, bound: Duration, what: &str) -> Result<String> {
        match tokio::time::timeout(bound, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => {
                let status = self.child.wait().await.ok();
                Err(check_failed(format!(
                    "{what}: the child exited ({status:?})"
                )))
            }
            Ok(Err(e)) => Err(check_failed(format!("{what}: reading its output: {e}"))),
            Err(_) => Err(check_failed(format!(
                "{what}: nothing printed within {bound:?}"
            ))),
        }
    }

    /// SIGKILL it, and return what it printed before it died and was not read yet.
    async fn kill(mut self) -> Result<Vec<String>> {
        self.child
            .start_kill()
            .map_err(|e| check_failed(format!("killing a child: {e}")))?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let mut rest = Vec::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(5), self.lines.next_line()).await
        {
            rest.push(line);
        }
        Ok(rest)
    }
}

/// The `main` of a backend's `tests/process_kills.rs` (a test without the libtest harness):
/// in a child, its role; otherwise both runs (or those whose name contains a filter given on
/// the command line), each report printed, `FAILURE` if any failed. `scenario` builds the
/// scenario from `connect`.
pub fn main(connect: Connect, scenario: impl FnOnce(Connect) -> ProcessKillScenario) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(role) = Role::from_env() {
        return runtime.block_on(role.run(&connect));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names = ["consumer_processes_killed", "producer_process_killed"];
    if args.iter().any(|a| a == "--list") {
        for name in names {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    // As libtest would: `--ignored` runs only ignored tests, and neither run is ignored.
    let ignored_only = args.iter().any(|a| a == "--ignored");
    let wanted = |name: &str| {
        !ignored_only && (filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
    };
    let scenario = scenario(connect);
    let mut failed = false;
    runtime.block_on(async {
        if wanted(names[0]) {
            match scenario.bounded(scenario.consumer_kills()).await {
                Ok(report) => println!("test {} ... ok: {report}", names[0]),
                Err(e) => {
                    failed = true;
                    println!("test {} ... FAILED: {e}", names[0]);
                }
            }
        }
        if wanted(names[1]) {
            match scenario.bounded(scenario.producer_kill()).await {
                Ok(report) => println!("test {} ... ok: {report}", names[1]),
                Err(e) => {
                    failed = true;
                    println!("test {} ... FAILED: {e}", names[1]);
                }
            }
        }
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
