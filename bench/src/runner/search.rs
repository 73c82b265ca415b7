//! The max-rate search (`producerRate: 0`), run as the warm-up: climb, then bracket.
//!
//! A step is *sustained* when the producers reach its rate, the consumers keep pace with them,
//! and the backlog stays under `acceptableBacklog`. The search climbs by 1.5x per short step
//! ([`SEARCH_STEP`]) until a step is missed, then bisects (geometric mean) between the highest
//! sustained and the lowest missed rate with longer steps ([`SEARCH_HOLD`]) until they are
//! within 5 % or the warm-up is over. So that one hiccup of a loaded machine does not decide
//! the figure, once a rate was sustained a missed step is tried once more before it counts,
//! and after such a miss the producers slow to the floor until the backlog is drained (at most
//! [`DRAIN_LIMIT`]), so the next step starts clean.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::progress::Progress;
use super::state::RunState;
use super::{SEARCH_FLOOR_DIVISOR, SEARCH_HOLD, SEARCH_STEP};
use crate::result::MaxRate;
use crate::workload::Plan;

/// The search stops bisecting once the highest sustained and the lowest missed rate are this
/// close (as a ratio).
const CONVERGED: f64 = 1.05;
/// Longest the search waits for the first message to come through before it starts.
const FIRST_MESSAGE_LIMIT: Duration = Duration::from_secs(10);
/// Longest a drain after a missed step may take.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// One step's figures.
struct Step {
    achieved: f64,
    consumed: f64,
    miss: Option<String>,
}

/// What the search needs from the run.
pub(super) struct Search<'a> {
    pub(super) state: &'a RunState,
    pub(super) plan: &'a Plan,
    pub(super) producers_total: f64,
    pub(super) subs: i64,
    pub(super) until: Instant,
    pub(super) progress: &'a Progress,
}

impl Search<'_> {
    fn backlog(&self) -> i64 {
        (self.state.sent_total.load(Ordering::Relaxed) as i64 * self.subs
            - self.state.received_total.load(Ordering::Relaxed) as i64)
            .max(0)
    }

    /// Hold `rate` for `hold` and judge it.
    async fn step(&self, rate: f64, hold: Duration) -> Step {
        self.state.set_rate(rate / self.producers_total);
        let t0 = Instant::now();
        let sent0 = self.state.sent_total.load(Ordering::Relaxed);
        let received0 = self.state.received_total.load(Ordering::Relaxed);
        tokio::time::sleep(hold).await;
        let secs = t0.elapsed().as_secs_f64();
        let achieved = (self.state.sent_total.load(Ordering::Relaxed) - sent0) as f64 / secs;
        // Consumed per subscription, comparable with the publish rate.
        let consumed = (self.state.received_total.load(Ordering::Relaxed) - received0) as f64
            / secs
            / self.subs as f64;
        let b = self.backlog();
        let miss = if achieved < rate * 0.9 {
            Some(format!(
                "producers reached {achieved:.0} of {rate:.0} msgs/s"
            ))
        } else if consumed < achieved * 0.9 {
            Some(format!(
                "consumers took {consumed:.0} msgs/s of {achieved:.0} published; backlog grew to {b}"
            ))
        } else if b > self.plan.acceptable_backlog as i64 {
            Some(format!(
                "backlog {b} over acceptableBacklog {}",
                self.plan.acceptable_backlog
            ))
        } else {
            None
        };
        Step {
            achieved,
            consumed,
            miss,
        }
    }

    /// Producers at `floor` until the backlog is down to a quarter of what is acceptable.
    async fn drain(&self, floor: f64) {
        self.state.set_rate(floor / self.producers_total);
        let limit = Instant::now() + DRAIN_LIMIT;
        let target = (self.plan.acceptable_backlog / 4) as i64;
        while self.backlog() > target && Instant::now() < limit && Instant::now() < self.until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Search from `initial`; every step is appended to `trace` as (seconds since `start`,
    /// rate, backlog). Returns what it concluded (the caller holds that rate).
    pub(super) async fn run(
        &self,
        initial: f64,
        trace: &mut Vec<(f64, f64, i64)>,
        start: Instant,
        failed: impl Fn() -> bool,
    ) -> MaxRate {
        // Never below the lowest step: a broker that cannot sustain even that gets an honest
        // "no sustainable rate" rather than a search collapsing towards 1 msg/s.
        let floor = (initial / SEARCH_FLOOR_DIVISOR).max(1.0);
        // Consumers still joining (a Kafka group takes seconds) take nothing, and a first step
        // would read that as the broker's capacity: trickle at the floor until a first message
        // has come through, and give the search its full time after that.
        let waiting = Instant::now();
        self.state.set_rate(floor / self.producers_total);
        while self.state.received_total.load(Ordering::Relaxed) == 0
            && waiting.elapsed() < FIRST_MESSAGE_LIMIT
            && !failed()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let until = self.until + waiting.elapsed();
        let mut rate = initial;
        let mut lowest = initial;
        let mut sustained: Option<f64> = None;
        let mut missed: Option<f64> = None;
        let mut retried = false;
        let mut lowest_miss = String::from("the search ended before its first step");
        while Instant::now() < until && !failed() {
            let hold = if sustained.is_some() && missed.is_some() {
                SEARCH_HOLD
            } else {
                SEARCH_STEP
            };
            let step = self.step(rate, hold).await;
            trace.push((start.elapsed().as_secs_f64(), rate, self.backlog()));
            lowest = lowest.min(rate);
            match step.miss {
                None => {
                    sustained = Some(sustained.map_or(rate, |s: f64| s.max(rate)));
                    retried = false;
                }
                Some(why) => {
                    // Once a rate was sustained, a miss decides the figure: start the next
                    // step clean, and try this one once more before it counts. Before that
                    // (a broker that cannot take the first step) the rate just comes down,
                    // below what was achieved, which lets the consumers catch up.
                    if sustained.is_some() {
                        self.drain(floor).await;
                        if !retried {
                            retried = true;
                            continue;
                        }
                    }
                    retried = false;
                    if rate <= lowest {
                        lowest_miss = why;
                    }
                    missed = Some(missed.map_or(rate, |m: f64| m.min(rate)));
                }
            }
            rate = match (sustained, missed) {
                (Some(ok), None) => ok * 1.5,
                (Some(ok), Some(miss)) => {
                    if miss / ok <= CONVERGED || miss <= ok {
                        break;
                    }
                    (ok * miss).sqrt()
                }
                // Nothing sustained yet: below what was achieved, so the consumers catch up,
                // but at most halved (consumers still starting take next to nothing in their
                // first step) and never below the floor.
                (None, Some(miss)) => {
                    if miss <= floor {
                        break;
                    }
                    (step.achieved.min(step.consumed) * 0.8)
                        .max(miss / 2.0)
                        .max(floor)
                        .min(miss * 0.9)
                }
                (None, None) => rate,
            };
            self.progress.show(&format!(
                "searching max rate: tried {:.0} msgs/s, next {rate:.0}",
                step.achieved
            ));
        }
        match sustained {
            Some(rate) => MaxRate::Found { rate },
            None => MaxRate::NotFound {
                lowest_step: lowest,
                reason: lowest_miss,
            },
        }
    }
}
