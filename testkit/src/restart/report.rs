//! What one run of the restart scenario saw.

use std::fmt;
use std::time::Duration;

use mailroom_core::ErrorKind;

use super::Retention;

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
