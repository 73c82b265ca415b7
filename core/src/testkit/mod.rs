//! The conformance suite every backend runs, gated by the capabilities it declares.
//!
//! ```no_run
//! # async fn demo() {
//! use mailroom_core::testkit::Conformance;
//! # async fn open() -> mailroom_core::Result<std::sync::Arc<dyn mailroom_core::Backend>> { todo!() }
//! let report = Conformance::new(|| open()).run().await;
//! report.print();
//! report.assert_passed();
//! # }
//! ```
//!
//! Each case opens its own backend from the factory, works on fresh random queue and exchange
//! names, and is skipped only when the backend declares it lacks a capability the case needs; the
//! report says which. `MAILROOM_CONFORMANCE_CASES=a,b` runs only the named cases.

mod cases;
mod local_broker;
mod tally;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::backend::Backend;
use crate::capabilities::Capability;
use crate::error::{Error, Result};

pub use local_broker::local_broker;
pub use tally::Tally;

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
    run: fn(Ctx) -> BoxFuture<'static, Result<String>>,
}

/// What a case gets: a connected backend and a source of fresh names.
#[derive(Clone)]
pub struct Ctx {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    case: &'static str,
}

impl Ctx {
    /// A fresh, unique name for a queue or exchange of this case.
    pub fn name(&self, what: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("mr-{}-{what}-{}", self.case.replace('_', "-"), &id[..12])
    }
}

/// How one case ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran and its checks held; the note carries counts (e.g. duplicates seen).
    Passed {
        /// What the case measured.
        note: String,
    },
    /// It was not run because the backend lacks these capabilities.
    Skipped {
        /// The missing capabilities.
        missing: Vec<Capability>,
    },
    /// It ran and a check failed.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// The results of a run.
#[derive(Debug)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// The broker version it reported.
    pub server: String,
    /// One entry per case, in suite order.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// Cases that failed.
    pub fn failed(&self) -> impl Iterator<Item = &CaseResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
    }

    /// Cases that were skipped.
    pub fn skipped(&self) -> impl Iterator<Item = &CaseResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Skipped { .. }))
    }

    /// Cases that passed.
    pub fn passed(&self) -> impl Iterator<Item = &CaseResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Passed { .. }))
    }

    /// Print the report to stderr (shown by `cargo test -- --nocapture` and on failure), and
    /// write it to `$MAILROOM_CONFORMANCE_REPORT_DIR/<backend>.txt` when that is set, so a test
    /// script can show every backend's skips after a captured run.
    pub fn print(&self) {
        eprintln!("{self}");
        if let Ok(dir) = std::env::var("MAILROOM_CONFORMANCE_REPORT_DIR") {
            let dir = std::path::Path::new(&dir);
            let written = std::fs::create_dir_all(dir).and_then(|_| {
                std::fs::write(
                    dir.join(format!("{}.txt", self.backend)),
                    format!("{self}\n"),
                )
            });
            if let Err(e) = written {
                eprintln!(
                    "cannot write the conformance report to {}: {e}",
                    dir.display()
                );
            }
        }
    }

    /// Panic with every failure listed, if any case failed.
    pub fn assert_passed(&self) {
        let failures: Vec<String> = self
            .failed()
            .map(|r| match &r.outcome {
                Outcome::Failed { error } => format!("{}: {error}", r.name),
                _ => unreachable!(),
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} conformance case(s) failed on {}:\n  {}",
            failures.len(),
            self.backend,
            failures.join("\n  ")
        );
    }

    /// Panic unless exactly these cases were skipped: a backend that claims nearly the whole
    /// suite names what it leaves out, so a case that starts skipping is noticed.
    pub fn assert_skipped_only(&self, expected: &[&str]) {
        let skipped: Vec<&str> = self.skipped().map(|r| r.name).collect();
        assert!(
            skipped == expected,
            "{} skipped {skipped:?}, expected {expected:?}",
            self.backend
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance suite on {} ({})", self.backend, self.server)?;
        for r in &self.results {
            let secs = r.elapsed.as_secs_f64();
            match &r.outcome {
                Outcome::Passed { note } if note.is_empty() => {
                    writeln!(f, "  pass  {:<34} {secs:>6.2}s", r.name)?
                }
                Outcome::Passed { note } => {
                    writeln!(f, "  pass  {:<34} {secs:>6.2}s  {note}", r.name)?
                }
                Outcome::Skipped { missing } => {
                    let names: Vec<&str> = missing.iter().map(|c| c.name()).collect();
                    writeln!(
                        f,
                        "  skip  {:<34}          backend declares no {}",
                        r.name,
                        names.join(", no ")
                    )?
                }
                Outcome::Failed { error } => {
                    writeln!(f, "  FAIL  {:<34} {secs:>6.2}s  {error}", r.name)?
                }
            }
        }
        write!(
            f,
            "conformance {}: {} cases ran ok, {} failed, {} skipped by capability",
            self.backend,
            self.passed().count(),
            self.failed().count(),
            self.skipped().count()
        )
    }
}

/// The suite, bound to a backend factory.
pub struct Conformance {
    factory: Factory,
    case_timeout: Duration,
    broker: Option<String>,
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
        }
    }

    /// Name the broker implementation in the report's header (e.g. `"Apache Kafka 4.1.1"`, from
    /// [`local_broker`]), beside what the backend itself reports.
    pub fn broker(mut self, implementation: Option<String>) -> Self {
        self.broker = implementation;
        self
    }

    /// Fail a case that runs longer than this (default 120 s).
    pub fn case_timeout(mut self, timeout: Duration) -> Self {
        self.case_timeout = timeout;
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
                report.backend = b.name().to_owned();
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
            report.results.push(self.run_case(case).await);
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
                    let ctx = Ctx {
                        backend: backend.clone(),
                        case: case.name,
                    };
                    let result = tokio::time::timeout(self.case_timeout, (case.run)(ctx)).await;
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

/// A failed check inside a case.
pub fn check_failed(message: impl Into<String>) -> Error {
    Error::new(crate::ErrorKind::Broker, message).with_operation("conformance check")
}

/// `Err(check_failed(..))` unless `cond` holds.
pub fn ensure(cond: bool, message: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(check_failed(message()))
    }
}
