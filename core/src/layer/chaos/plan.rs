//! The plan of a chaos layer: which operation of which kind suffers which fault, decided the
//! same way on every run of the same plan, and the counts of what the plan saw. The layer that
//! applies it to a backend's handles is `chaos.rs`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// How many kinds of [`Operation`] there are.
const KINDS: usize = 7;

/// An operation a chaos plan can disturb. Each kind is counted on its own, from 1, across
/// everything the layered backend opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening a producer, consumer or transactional unit.
    Open,
    /// Handing a message to a producer (`enqueue`, `send`, and each message of a batch).
    Send,
    /// The broker's confirm of a message handed over.
    Confirm,
    /// Receiving a delivery.
    Receive,
    /// Acknowledging a delivery.
    Ack,
    /// Negatively acknowledging a delivery.
    Nack,
    /// Committing a transactional unit's transaction. A commit failed as `Aborted` rolls the
    /// transaction back first (its inputs come again), as a broker's abort does.
    Commit,
}

impl Operation {
    const ALL: [Operation; KINDS] = [
        Operation::Open,
        Operation::Send,
        Operation::Confirm,
        Operation::Receive,
        Operation::Ack,
        Operation::Nack,
        Operation::Commit,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            Operation::Open => "open",
            Operation::Send => "send",
            Operation::Confirm => "confirm",
            Operation::Receive => "receive",
            Operation::Ack => "ack",
            Operation::Nack => "nack",
            Operation::Commit => "commit",
        }
    }
}

/// What happens to an operation the plan picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// It fails with an error of this kind (temporary as the kind is by default), without
    /// reaching the backend; a failed send or confirm hands its message back in the error.
    Fail(ErrorKind),
    /// Like `Fail`, but a send or confirm loses its message: the error does not carry it (a
    /// backend that breaks its contract).
    FailLosingMessage(ErrorKind),
    /// The connection drops: a temporary `Connection` error, the message handed back; a settle
    /// that fails so leaves its delivery to come back.
    Disconnect,
    /// It takes this much longer (a receive or send waits first; a confirm comes later).
    Delay(Duration),
    /// Operations of this kind go one at a time, each taking this long: a slow broker.
    Throttle(Duration),
}

/// Which operations of a kind a rule picks, by their 1-based number.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum When {
    /// Only the Nth.
    Nth(u64),
    /// The first N.
    First(u64),
    /// Every Nth (N, 2N, ...).
    Every(u64),
    /// All of them.
    Always,
    /// Each with this probability (0 to 1), drawn from the plan's seed: the same plan picks
    /// the same operations on every run.
    Chance(f64),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub(super) operation: Operation,
    pub(super) when: When,
    pub(super) fault: Fault,
}

/// A plan of faults and the count of what it saw, shared by every part of a layered backend.
pub struct Chaos {
    pub(super) seed: u64,
    pub(super) rules: Vec<Rule>,
    seen: [AtomicU64; KINDS],
    passed: [AtomicU64; KINDS],
    lines: [tokio::sync::Mutex<()>; KINDS],
}

/// How many operations of each kind a chaos plan saw, and how many went through unharmed
/// and succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosCounts {
    /// Operations of the kind that started.
    pub seen: u64,
    /// Operations of the kind that reached the backend and succeeded.
    pub passed: u64,
}

impl Chaos {
    pub(super) fn new(seed: u64) -> Self {
        Chaos {
            seed,
            rules: Vec::new(),
            seen: Default::default(),
            passed: Default::default(),
            lines: Default::default(),
        }
    }

    /// The counts of one kind of operation so far.
    pub fn counts(&self, operation: Operation) -> ChaosCounts {
        ChaosCounts {
            seen: self.seen[operation.index()].load(Ordering::SeqCst),
            passed: self.passed[operation.index()].load(Ordering::SeqCst),
        }
    }

    pub(super) fn planned(&self, operation: Operation) -> bool {
        self.rules.iter().any(|r| r.operation == operation)
    }

    /// Number the next operation of this kind and say what happens to it.
    pub(super) fn next(&self, operation: Operation) -> (u64, Option<Fault>) {
        let n = self.seen[operation.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let fault = self
            .rules
            .iter()
            .find(|r| r.operation == operation && self.picks(r.when, operation, n))
            .map(|r| r.fault);
        (n, fault)
    }

    pub(super) fn picks(&self, when: When, operation: Operation, n: u64) -> bool {
        match when {
            When::Nth(k) => n == k,
            When::First(k) => n <= k,
            When::Every(k) => k > 0 && n % k == 0,
            When::Always => true,
            When::Chance(p) => {
                let draw = splitmix64(self.seed ^ ((operation.index() as u64) << 56) ^ n);
                ((draw >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        }
    }

    /// Count `count` operations of this kind that bypass `next` (a batch forwarded whole, a
    /// receive answered by the fast path).
    pub(super) fn saw(&self, operation: Operation, count: u64) {
        self.seen[operation.index()].fetch_add(count, Ordering::SeqCst);
    }

    pub(super) fn passed(&self, operation: Operation) {
        self.passed[operation.index()].fetch_add(1, Ordering::SeqCst);
    }

    /// Count a success of `operation`, passing the result through.
    pub(super) fn note<T>(&self, operation: Operation, result: Result<T>) -> Result<T> {
        if result.is_ok() {
            self.passed(operation);
        }
        result
    }

    fn error(&self, operation: Operation, n: u64, kind: ErrorKind) -> Error {
        Error::new(
            kind,
            format!(
                "chaos: {} #{n} failed as planned (seed {})",
                operation.as_str(),
                self.seed
            ),
        )
        .with_operation(operation.as_str())
    }

    /// The error of a failing fault, `None` for a delay.
    pub(super) fn failure(
        &self,
        operation: Operation,
        n: u64,
        fault: Fault,
    ) -> Option<(Error, bool)> {
        match fault {
            Fault::Fail(kind) => Some((self.error(operation, n, kind), true)),
            Fault::FailLosingMessage(kind) => Some((self.error(operation, n, kind), false)),
            Fault::Disconnect => Some((self.error(operation, n, ErrorKind::Connection), true)),
            Fault::Delay(_) | Fault::Throttle(_) => None,
        }
    }

    /// Wait as a delaying fault says.
    pub(super) async fn wait(&self, operation: Operation, fault: Option<Fault>) {
        match fault {
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Throttle(d)) => {
                let _one_at_a_time = self.lines[operation.index()].lock().await;
                tokio::time::sleep(d).await;
            }
            _ => {}
        }
    }
}

impl fmt::Debug for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Chaos");
        d.field("seed", &self.seed).field("rules", &self.rules);
        for op in Operation::ALL {
            d.field(op.as_str(), &self.counts(op));
        }
        d.finish()
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
