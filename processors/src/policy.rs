//! What a stage does when it fails: fail, skip, retry with backoff, dead-letter or requeue.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use mailroom_core::Error;

use crate::sink::Sink;

/// Exponential backoff with jitter, and how many attempts to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Growth of the delay per attempt.
    pub multiplier: f64,
    /// Fraction of each delay that is randomised (0 = none, 1 = anywhere in 0..delay).
    pub jitter: f64,
    /// Total attempts including the first (at least 1).
    pub max_attempts: u32,
    /// Retry errors the error marks permanent too (by default only temporary ones are retried,
    /// trusting [`Error::is_temporary`]).
    pub retry_permanent: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
            max_attempts: 5,
            retry_permanent: false,
        }
    }
}

impl Backoff {
    /// `max_attempts` attempts, starting at `initial` and doubling.
    pub fn exponential(initial: Duration, max_attempts: u32) -> Self {
        Backoff {
            initial,
            max_attempts,
            ..Backoff::default()
        }
    }

    /// Retry permanent errors too.
    pub fn retry_permanent(mut self) -> Self {
        self.retry_permanent = true;
        self
    }

    /// Randomise this fraction of each delay.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The delay before attempt `attempt + 1`, after `attempt` attempts failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = self.initial.as_secs_f64() * exp;
        let base = base.min(self.max.as_secs_f64());
        // The fields are public: a NaN or out-of-range jitter means none or all of it, and a
        // delay past what a Duration holds is the cap.
        let fraction = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let jitter = base * fraction * random_unit();
        Duration::try_from_secs_f64((base - jitter).max(0.0)).unwrap_or(self.max)
    }

    pub(crate) fn should_retry(&self, error: &Error, attempt: u32) -> bool {
        attempt < self.max_attempts && (self.retry_permanent || error.is_temporary())
    }
}

/// A random number in 0..1, good enough for jitter (no extra dependency for it).
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What a stage does with an item it failed on (an error it returned, or a panic).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Stop the pipeline with the error; every unsettled input is redelivered.
    #[default]
    Fail,
    /// Drop the item and ack its input (counted as skipped).
    Skip,
    /// Retry the stage on the same input with backoff; after the last attempt apply `then`.
    Retry {
        /// Delays and attempts.
        backoff: Backoff,
        /// What to do once the attempts are used up.
        then: Box<ErrorPolicy>,
    },
    /// Send the original input to this sink, stamped with the stage, error, attempt and
    /// source; ack it once the dead-letter sink confirmed.
    DeadLetter(Sink),
    /// Nack the original input back to its broker (after `delay`, where the broker has delayed
    /// delivery) so that it is processed again from the start.
    Requeue {
        /// Hold it this long first.
        delay: Option<Duration>,
    },
}

impl ErrorPolicy {
    /// Retry with `backoff`, then fail the pipeline.
    pub fn retry(backoff: Backoff) -> Self {
        ErrorPolicy::Retry {
            backoff,
            then: Box::new(ErrorPolicy::Fail),
        }
    }

    /// Dead-letter to `sink`.
    pub fn dead_letter(sink: Sink) -> Self {
        ErrorPolicy::DeadLetter(sink)
    }

    /// Retry with `backoff`, then apply `then` (which must not itself retry).
    pub fn retry_then(backoff: Backoff, then: ErrorPolicy) -> Self {
        ErrorPolicy::Retry {
            backoff,
            then: Box::new(then.terminal().clone()),
        }
    }

    /// The backoff, when this policy retries.
    pub(crate) fn backoff(&self) -> Option<&Backoff> {
        match self {
            ErrorPolicy::Retry { backoff, .. } => Some(backoff),
            _ => None,
        }
    }

    /// The policy applied once retries are over.
    pub(crate) fn terminal(&self) -> &ErrorPolicy {
        match self {
            ErrorPolicy::Retry { then, .. } => then.terminal(),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_core::ErrorKind;

    #[test]
    fn backoff_grows_exponentially_within_its_bounds() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::exponential(Duration::from_millis(10), 10)
        };
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(2), Duration::from_millis(20));
        assert_eq!(b.delay(4), Duration::from_millis(80));
        let capped = Backoff {
            max: Duration::from_millis(50),
            ..b.clone()
        };
        assert_eq!(capped.delay(10), Duration::from_millis(50));
        let jittered = b.jitter(0.5);
        for _ in 0..100 {
            let d = jittered.delay(2);
            assert!(d <= Duration::from_millis(20) && d >= Duration::from_millis(10));
        }
    }

    /// The fields are public, so any value can reach `delay`: it must not panic on them.
    #[test]
    fn backoff_delay_stays_a_duration_for_extreme_settings() {
        let huge = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(huge.delay(200), Duration::MAX);
        let odd = Backoff {
            multiplier: f64::NAN,
            jitter: f64::NAN,
            ..Backoff::default()
        };
        assert_eq!(odd.delay(3), Duration::from_millis(100));
        let over = Backoff {
            jitter: 5.0,
            ..Backoff::default()
        };
        assert!(over.delay(2) <= Duration::from_millis(200));
    }

    #[test]
    fn retries_only_temporary_errors_unless_asked() {
        let b = Backoff::exponential(Duration::from_millis(1), 3);
        let temporary = Error::new(ErrorKind::Timeout, "t");
        let permanent = Error::new(ErrorKind::Decode, "p");
        assert!(b.should_retry(&temporary, 1));
        assert!(!b.should_retry(&temporary, 3));
        assert!(!b.should_retry(&permanent, 1));
        assert!(b.retry_permanent().should_retry(&permanent, 1));
    }
}
