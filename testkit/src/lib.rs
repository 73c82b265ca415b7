//! The conformance suite every backend runs, gated by the capabilities it declares.
//!
//! ```no_run
//! # async fn demo() {
//! use mailroom_testkit::Conformance;
//! # async fn open() -> mailroom_core::Result<std::sync::Arc<dyn mailroom_core::Backend>> { todo!() }
//! let report = Conformance::new(|| open()).run().await;
//! report.print();
//! report.assert_passed();
//! # }
//! ```
//!
//! Each case opens its own backend from the factory, works on fresh random queue and exchange
//! names, and is skipped only when the backend declares it lacks a capability the case needs; the
//! report says which. `MAILROOM_CONFORMANCE_CASES=a,b` runs only the named cases. The cases live
//! in one file per area (send, receive, settle, timing, routing, dead letters, limits, declared
//! absences, batch, binary safety, replay, transactions).
//!
//! Beside the suite: [`RestartScenario`], the one broker-restart fault scenario every backend
//! that can restart its broker runs with its own [`RestartHook`]; [`SoakScenario`], the long
//! steady-rate run (lost, duplicates, latency, resident memory) `scripts/soak.sh` drives;
//! [`Tally`] for duplicate-aware counting; [`Waypoints`] and [`within`] to bound a long test and
//! name where it hung; [`local_broker`] to name the broker `scripts/brokers.sh` runs; [`relay`],
//! the loopback TCP relay a test breaks the network with (cut, stall, slow, or at a point of the
//! protocol); [`NetworkFaultScenario`], the traffic-through-a-fault check every networked backend
//! runs; [`process_kills`], consumer and producer processes SIGKILLed mid-run; and [`tls`] for
//! private TLS and SASL brokers with certificates made at test time; [`FuzzCorpus`], a fuzz
//! target's committed seeds and crash inputs for the tests that replay them on stable.

mod cases;
mod fuzz_corpus;
mod local_broker;
mod network_faults;
pub mod process_kills;
pub mod relay;
mod report;
mod restart;
mod soak;
mod suite;
mod tally;
pub mod tls;
mod waypoints;

use mailroom_core::{Error, ErrorKind, Result};

pub use fuzz_corpus::FuzzCorpus;
pub use local_broker::local_broker;
pub use network_faults::{Bounds, NetworkFault, NetworkFaultReport, NetworkFaultScenario};
pub use report::{CaseResult, Outcome, Report};
pub use restart::{Failure, LocalRestart, RestartHook, RestartReport, RestartScenario, Retention};
pub use soak::{resident_kib, LatencyPercentiles, RssSample, SoakReport, SoakScenario};
pub use suite::{Case, Conformance, Factory, Fixture};
pub use tally::Tally;
pub use waypoints::{within, Waypoints};

/// A failed check inside a case.
pub fn check_failed(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Broker, message).with_operation("conformance check")
}

/// `Err(check_failed(..))` unless `cond` holds.
pub fn ensure(cond: bool, message: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(check_failed(message()))
    }
}
