//! What a run of the suite found, printed and written for scripts/test.sh.

use std::fmt;
use std::time::Duration;

use mailroom_core::Capability;

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
