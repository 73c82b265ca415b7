//! The suite: its cases' shape, what each runs against, and the runner.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use mailroom_core::{Backend, Capability, Result};

use crate::cases;
use crate::report::{CaseResult, Outcome, Report};

/// Cases that [`Conformance::copies`] runs once: they check how work is shared between
/// consumers, which ten copies at once on a small machine turn into a test of the scheduler
/// (one consumer starved of CPU takes nothing), not of the backend.
const RUN_ONCE: &[&str] = &["competing_consumers_share"];

/// Opens a fresh connection to the backend under test.
pub type Factory = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Backend>>> + Send + Sync>;

/// One conformance case: a name, the capabilities it needs, and its body.
pub struct Case {
    /// Stable name, used in reports and in `MAILROOM_CONFORMANCE_CASES`.
    pub name: &'static str,
    /// What it checks, in one line.
    pub checks: &'static str,
    /// Capabilities that must all be declared for the case to run.
    pub requires: &'static [Capability],
    pub(crate) run: fn(Fixture) -> BoxFuture<'static, Result<String>>,
}

/// What a case runs against: the connected backend under test and a source of fresh names
/// for the queues and exchanges it declares.
#[derive(Clone)]
pub struct Fixture {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    pub(crate) case: &'static str,
}

impl Fixture {
    /// A fresh, unique name for a queue or exchange of this case.
    pub fn name(&self, what: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("mr-{}-{what}-{}", self.case.replace('_', "-"), &id[..12])
    }
}

/// The suite, bound to a backend factory.
pub struct Conformance {
    factory: Factory,
    case_timeout: Duration,
    broker: Option<String>,
    copies: usize,
}

impl Conformance {
    /// A suite that opens the backend under test with `factory` (once per case).
    pub fn new<F, Fut>(factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Backend>>> + Send + 'static,
    {
        Conformance {
            factory: Arc::new(move || Box::pin(factory())),
            case_timeout: Duration::from_secs(120),
            broker: None,
            copies: 1,
        }
    }

    /// Name the broker implementation in the report's header (e.g. `"Apache Kafka 4.1.1"`, from
    /// [`local_broker`](crate::local_broker)), beside what the backend itself reports.
    pub fn broker(mut self, implementation: Option<String>) -> Self {
        self.broker = implementation;
        self
    }

    /// Fail a case that runs longer than this (default 120 s).
    pub fn case_timeout(mut self, timeout: Duration) -> Self {
        self.case_timeout = timeout;
        self
    }

    /// Run `copies` copies of each case at once (each with its own backend and names), to find
    /// races between concurrent users of a backend and a broker; a case passes only if every
    /// copy does (default 1). The cases that measure how consumers share a queue run once.
    pub fn copies(mut self, copies: usize) -> Self {
        self.copies = copies.max(1);
        self
    }

    /// Every case of the suite, in order.
    pub fn cases() -> &'static [Case] {
        cases::ALL
    }

    /// Run every case (or those named in `MAILROOM_CONFORMANCE_CASES`).
    pub async fn run(&self) -> Report {
        let only: Option<Vec<String>> = std::env::var("MAILROOM_CONFORMANCE_CASES")
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
        let mut report = Report {
            backend: String::from("?"),
            server: String::from("?"),
            results: Vec::new(),
        };
        match (self.factory)().await {
            Ok(b) => {
                report.backend = match self.copies {
                    1 => b.name().to_owned(),
                    // Its own report file beside the one-copy run's.
                    n => format!("{}-x{n}", b.name()),
                };
                let reported = b
                    .server_version()
                    .await
                    .unwrap_or_else(|e| format!("version unknown: {e}"));
                report.server = match &self.broker {
                    Some(implementation) => format!("{implementation}; {reported}"),
                    None => reported,
                };
                let _ = b.close().await;
            }
            Err(e) => {
                report.results.push(CaseResult {
                    name: "connect",
                    outcome: Outcome::Failed {
                        error: e.to_string(),
                    },
                    elapsed: Duration::ZERO,
                });
                return report;
            }
        }
        for case in cases::ALL {
            if only
                .as_ref()
                .is_some_and(|o| !o.iter().any(|n| n == case.name))
            {
                continue;
            }
            report.results.push(self.run_copies(case).await);
        }
        report
    }

    /// Close the case's backend. A close error is the backend's to report elsewhere; a close
    /// that does not return is a failure here, so one hang cannot stall the whole suite.
    async fn close(&self, backend: &Arc<dyn Backend>) -> std::result::Result<(), String> {
        match tokio::time::timeout(self.case_timeout, backend.close()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "the backend's close did not return within {:?}",
                self.case_timeout
            )),
        }
    }

    /// `self.copies` copies of `case` at once, as one result: the first failure (naming how many
    /// copies failed), else the first copy's note.
    async fn run_copies(&self, case: &'static Case) -> CaseResult {
        if self.copies == 1 {
            return self.run_case(case).await;
        }
        if RUN_ONCE.contains(&case.name) {
            let mut once = self.run_case(case).await;
            if let Outcome::Passed { note } = &mut once.outcome {
                *note = format!(
                    "run once, not x{}: it measures scheduling; {note}",
                    self.copies
                );
            }
            return once;
        }
        let start = Instant::now();
        let results =
            futures_util::future::join_all((0..self.copies).map(|_| self.run_case(case))).await;
        let n = self.copies;
        let mut failed = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.outcome {
                Outcome::Failed { error } => Some(format!("copy {}: {error}", i + 1)),
                _ => None,
            })
            .peekable();
        let outcome = match failed.peek().cloned() {
            Some(first) => Outcome::Failed {
                error: format!("{} of {n} copies failed; {first}", failed.count()),
            },
            None => match results.into_iter().next().map(|r| r.outcome) {
                Some(Outcome::Passed { note }) => Outcome::Passed {
                    note: format!("x{n} at once; copy 1: {note}"),
                },
                Some(other) => other,
                None => Outcome::Failed {
                    error: "no copy ran".into(),
                },
            },
        };
        CaseResult {
            name: case.name,
            outcome,
            elapsed: start.elapsed(),
        }
    }

    async fn run_case(&self, case: &'static Case) -> CaseResult {
        let start = Instant::now();
        let outcome = match (self.factory)().await {
            Err(e) => Outcome::Failed {
                error: format!("cannot connect: {e}"),
            },
            Ok(backend) => {
                let missing: Vec<Capability> = case
                    .requires
                    .iter()
                    .copied()
                    .filter(|c| !backend.capabilities().supports(*c))
                    .collect();
                if !missing.is_empty() {
                    match self.close(&backend).await {
                        Ok(()) => Outcome::Skipped { missing },
                        Err(error) => Outcome::Failed { error },
                    }
                } else {
                    let fixture = Fixture {
                        backend: backend.clone(),
                        case: case.name,
                    };
                    let result = tokio::time::timeout(self.case_timeout, (case.run)(fixture)).await;
                    let closed = self.close(&backend).await;
                    match (result, closed) {
                        (Ok(Ok(note)), Ok(())) => Outcome::Passed { note },
                        (Ok(Ok(_)), Err(error)) => Outcome::Failed { error },
                        (Ok(Err(e)), _) => Outcome::Failed {
                            error: e.to_string(),
                        },
                        (Err(_), _) => Outcome::Failed {
                            error: format!("timed out after {:?}", self.case_timeout),
                        },
                    }
                }
            }
        };
        CaseResult {
            name: case.name,
            outcome,
            elapsed: start.elapsed(),
        }
    }
}
