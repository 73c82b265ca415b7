//! The max-rate ratio of a backend and its raw baseline, measured in paired closed-loop steps.
//!
//! The search ([`super::search`]) finds a workload's rate by pass/fail steps; a ratio of two
//! searches moved with every step a stall decided (Apache Kafka: one run's rounds spread
//! 0.53–1.84, three runs' medians 0.66–0.89). Here each side's figure is measured, not
//! bracketed: in a *saturation step* its producers send as fast as they can while the backlog
//! stays within `acceptableBacklog` ([`Probe::saturate`]; the consumers' pace sets the
//! producers'), and the figure is the lesser of what was sent and what was taken per
//! subscription over the step's second half: the most the broker moves with a bounded backlog,
//! which is what the search looks for.
//!
//! Steps take turns, one side then the other, the order swapped every pair (ABBA), so what
//! the machine does meanwhile lands on both; the side not stepping trickles at the floor and
//! each step starts from a drained backlog. A first pair warms both sides up (a Kafka producer's
//! batches, a JIT, the page cache) and is not counted. The ratio is the median pair's
//! ([`Paired::ratio`]); the spread is the pairs' ratios'.

use std::time::{Duration, Instant};

use super::search::{Probe, Search, StepFigures};
use crate::result::MaxRate;

/// How long each side holds a saturation step: [`SATURATION_SETTLE`], then measured. A stall
/// of a hundred milliseconds moves one figure by an eighth, and the median over the pairs
/// leaves it out. Longer steps put the two sides of a pair further apart in time: on the
/// simulated machine (a neighbour whose load changes every 2-6 s) 2-second steps put one run
/// in ten 7.6 % off where 1-second ones put it 3.3 % off.
pub(super) const SATURATION_STEP: Duration = Duration::from_secs(1);
/// The start of a saturation step that is not measured: the side was idle, and its producers
/// fill the bound and its consumers' fetches catch up within it.
pub(super) const SATURATION_SETTLE: Duration = Duration::from_millis(250);

/// Paired saturation steps: each side's figure per pair, and each pair's ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Each counted pair's figure on the first side (the backend).
    pub a: Vec<MaxRate>,
    /// Each counted pair's figure on the second side (the raw baseline).
    pub b: Vec<MaxRate>,
    /// Each pair's ratio, a ÷ b, for the pairs where both sides moved messages.
    pub ratios: Vec<f64>,
    /// Both sides' rates in those pairs, (a, b).
    pub found: Vec<(f64, f64)>,
}

impl Paired {
    /// The pair whose ratio is the median of the pairs' ratios (with an even number of pairs,
    /// the lower of the middle two: a pair's own figures, never a mean of two).
    ///
    /// A pair's two figures come from steps taken in turn, so what the machine does meanwhile
    /// lands on both and a pair's ratio is steadier than either figure. The broker has spells
    /// of its own (a JVM collection, a log roll) that lower *or raise* one side's figure in one
    /// pair, and each side's highest figure would pair two pairs' luck into a ratio no pair
    /// showed; the median pair leaves out as many outliers above as below.
    fn median_pair(&self) -> Option<(f64, f64)> {
        let mut pairs: Vec<(f64, f64)> = self.found.clone();
        pairs.sort_by(|x, y| (x.0 / x.1).total_cmp(&(y.0 / y.1)));
        pairs.get(pairs.len().checked_sub(1)? / 2).copied()
    }

    /// The backend's rate in the median pair ([`Paired::ratio`]).
    pub fn rate(&self) -> Option<f64> {
        Some(self.median_pair()?.0)
    }

    /// The raw baseline's rate in the median pair ([`Paired::ratio`]).
    pub fn raw_rate(&self) -> Option<f64> {
        Some(self.median_pair()?.1)
    }

    /// The median of the pairs' ratios (the median pair's rate ÷ its raw rate), so it lies
    /// within the pairs' spread. `None` unless both sides moved messages in a pair.
    pub fn ratio(&self) -> Option<f64> {
        let (rate, raw_rate) = self.median_pair()?;
        Some(rate / raw_rate)
    }

    /// The lowest and highest pair ratio.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let lo = self.ratios.iter().copied().reduce(f64::min)?;
        let hi = self.ratios.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    }
}

/// A saturation step's figure: what the consumers took, msgs/s per subscription. Not the
/// lesser of that and what was sent: in closed loop the producers send in bursts (a burst up
/// to the bound, then a wait until half of it has been taken), and a window can fall inside a
/// wait, where sending stops but the broker goes on delivering at its pace (on SQS, half the
/// windows of one run showed under 1,000 msgs/s sent while 3,000-4,700 were taken). What was
/// taken is the broker's pace whichever side limits it: with the consumers behind, a backlog
/// is always there to take; with the producers behind, the consumers take what they send.
fn moved(step: &StepFigures) -> f64 {
    step.consumed
}

/// One saturation step on `probe`, then a drain at `floor` so the next step (either side's)
/// starts clean.
async fn saturation_step<P: Probe>(probe: &P, floor: f64, trace: &mut Vec<(f64, f64, i64)>) -> f64 {
    probe.show(&format!("saturation step ({SATURATION_STEP:?})"));
    let step = probe.saturate(SATURATION_SETTLE, SATURATION_STEP).await;
    tracing::debug!(
        achieved = step.achieved,
        consumed = step.consumed,
        backlog_median = step.backlog_median,
        "saturation step"
    );
    trace.push((probe.elapsed(), moved(&step), step.backlog_median));
    probe.drain(floor).await;
    probe.idle(floor);
    moved(&step)
}

/// `pairs` counted pairs of saturation steps on `a` (the backend) and `b` (its raw baseline),
/// after one warm-up pair, ABBA; no pair starts once either side's time is over or a run has
/// failed (a pair during which one failed is not counted). Every step goes to its side's trace as (seconds, figure,
/// backlog median), for the debug log.
pub(super) async fn paired_saturation<A: Probe, B: Probe>(
    a: &A,
    b: &B,
    floor: f64,
    pairs: usize,
    trace_a: &mut Vec<(f64, f64, i64)>,
    trace_b: &mut Vec<(f64, f64, i64)>,
) -> Paired {
    a.first_message(floor).await;
    b.first_message(floor).await;
    let mut out = Paired {
        a: Vec::new(),
        b: Vec::new(),
        ratios: Vec::new(),
        found: Vec::new(),
    };
    let over = || a.expired() || b.expired() || a.failed() || b.failed();
    // Pair 0 is the warm-up. A pair is four steps, ABBA: a load that rises or falls across
    // the pair weighs on both sides alike, and its figure is each side's two steps together.
    for pair in 0..=pairs {
        if over() {
            break;
        }
        let a1 = saturation_step(a, floor, trace_a).await;
        let b1 = saturation_step(b, floor, trace_b).await;
        let b2 = saturation_step(b, floor, trace_b).await;
        let a2 = saturation_step(a, floor, trace_a).await;
        if pair == 0 || a.failed() || b.failed() {
            continue;
        }
        let (ra, rb) = ((a1 + a2) / 2.0, (b1 + b2) / 2.0);
        out.a.push(figure(ra, floor));
        out.b.push(figure(rb, floor));
        if ra > 0.0 && rb > 0.0 {
            out.ratios.push(ra / rb);
            out.found.push((ra, rb));
        }
    }
    out
}

/// Paired saturation ([`paired_saturation`]) on two live runs, `sides` = (backend, raw
/// baseline), from `floor`; `failed` tells whether each run has failed. Each side's steps go to
/// its own trace, only for the debug log.
pub(super) async fn run_saturation(
    sides: [&Search<'_>; 2],
    floor: f64,
    pairs: usize,
    start: Instant,
    failed: [&dyn Fn() -> bool; 2],
) -> Paired {
    let [a, b] = sides;
    let (pa, pb) = (a.probe(start, failed[0]), b.probe(start, failed[1]));
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let paired = paired_saturation(&pa, &pb, floor, pairs, &mut ta, &mut tb).await;
    tracing::debug!(?ta, ?tb, ?paired, "paired saturation");
    paired
}

/// A side's figure as a max-rate outcome: nothing moved is no rate at all.
fn figure(rate: f64, floor: f64) -> MaxRate {
    if rate > 0.0 {
        MaxRate::Found { rate }
    } else {
        MaxRate::NotFound {
            lowest_step: floor,
            reason: String::from("nothing moved end to end in a saturation step"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Paired saturation on simulated brokers sharing a simulated machine: time is virtual
    //! (each step adds its hold), so nothing here depends on timing.

    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::compare::MAX_RATE_PAIRS;

    /// A machine two simulated brokers share: other work on it comes and goes (a neighbour
    /// taking up to 45 % of it for a few seconds at a time), a step can stall (one in twenty:
    /// consumers at half speed), and each step's capacity jitters by up to ±4 % on its own.
    /// Pseudo-random from a seed, so a failure can be replayed.
    struct Machine {
        now: Cell<Duration>,
        seed: Cell<u64>,
        /// The neighbour's share of the machine, and when it changes next.
        load: Cell<(f64, Duration)>,
    }

    impl Machine {
        fn new(seed: u64) -> Machine {
            Machine {
                now: Cell::new(Duration::ZERO),
                seed: Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
                load: Cell::new((0.0, Duration::ZERO)),
            }
        }

        /// Uniform in [0, 1).
        fn random(&self) -> f64 {
            let mut x = self.seed.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.seed.set(x);
            (x >> 11) as f64 / (1u64 << 53) as f64
        }

        /// The share of the machine left now.
        fn left(&self) -> f64 {
            let (mut share, mut until) = self.load.get();
            while self.now.get() >= until {
                share = if self.random() < 0.5 {
                    0.0
                } else {
                    0.45 * self.random()
                };
                until += Duration::from_secs_f64(2.0 + 4.0 * self.random());
            }
            self.load.set((share, until));
            1.0 - share
        }
    }

    /// A broker of `capacity` on a shared [`Machine`]; records the order of its steps.
    struct Noisy<'m> {
        name: char,
        capacity: f64,
        machine: &'m Machine,
        budget: Duration,
        order: &'m RefCell<String>,
        /// Whether its consumers never receive anything (a broken broker).
        dead: bool,
    }

    impl Probe for Noisy<'_> {
        async fn step(&self, _rate: f64, _hold: Duration) -> StepFigures {
            unreachable!("a saturation run takes no paced steps")
        }

        async fn saturate(&self, _settle: Duration, hold: Duration) -> StepFigures {
            self.order.borrow_mut().push(self.name);
            let m = self.machine;
            let capacity = self.capacity * m.left() * (0.96 + 0.08 * m.random());
            m.now.set(m.now.get() + hold);
            let stalled = m.random() < 0.05;
            let consumed = match (self.dead, stalled) {
                (true, _) => 0.0,
                (false, true) => capacity * 0.5,
                (false, false) => capacity,
            };
            StepFigures {
                // Closed loop: the producers are held to what the consumers take (plus the
                // backlog bound), so they send a little more than was consumed.
                achieved: capacity.min(consumed * 1.02 + 1.0),
                consumed,
                backlog_median: 2_500,
                backlog_end: 2_500,
            }
        }

        async fn drain(&self, _floor: f64) {
            let m = self.machine;
            m.now.set(m.now.get() + Duration::from_millis(200));
        }

        async fn first_message(&self, _floor: f64) {}

        fn idle(&self, _floor: f64) {}

        fn expired(&self) -> bool {
            self.machine.now.get() >= self.budget
        }

        fn failed(&self) -> bool {
            false
        }

        fn elapsed(&self) -> f64 {
            self.machine.now.get().as_secs_f64()
        }

        fn show(&self, _line: &str) {}
    }

    /// A backend of 80 k msgs/s against a raw baseline of 100 k on one noisy machine.
    fn paired(seed: u64, pairs: usize, budget: Duration, dead_backend: bool) -> (Paired, String) {
        let machine = Machine::new(seed);
        let order = RefCell::new(String::new());
        let backend = Noisy {
            name: 'a',
            capacity: 80_000.0,
            machine: &machine,
            budget,
            order: &order,
            dead: dead_backend,
        };
        let raw = Noisy {
            name: 'b',
            capacity: 100_000.0,
            machine: &machine,
            budget,
            order: &order,
            dead: false,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        let out = rt.block_on(paired_saturation(
            &backend, &raw, 100.0, pairs, &mut ta, &mut tb,
        ));
        (out, order.into_inner())
    }

    #[test]
    fn a_noisy_machine_gives_the_paired_ratio_within_five_percent_nine_times_in_ten() {
        // The true ratio is 0.8; each side's own figure moves by up to 45 % with the neighbour,
        // whose load changes every 2-6 s: a step of either side can fall on either side of a
        // change, so a few pairs are far off in both directions, and the median leaves them out.
        let mut offs = Vec::new();
        for seed in 1..=200 {
            let (out, _) = paired(seed, MAX_RATE_PAIRS, Duration::from_secs(600), false);
            assert_eq!(out.ratios.len(), MAX_RATE_PAIRS, "seed {seed}: {out:?}");
            let ratio = out.ratio().expect("a ratio");
            let (lo, hi) = out.spread().expect("a spread");
            assert!(lo <= ratio && ratio <= hi, "seed {seed}: {out:?}");
            offs.push((ratio / 0.8 - 1.0).abs());
        }
        offs.sort_by(f64::total_cmp);
        let (p50, p90, worst) = (offs[100], offs[180], offs[199]);
        eprintln!(
            "paired saturation on a noisy machine, 200 seeds: median {:.1} %, p90 {:.1} %, worst {:.1} % off",
            p50 * 100.0,
            p90 * 100.0,
            worst * 100.0
        );
        assert!(p90 <= 0.05, "p90 {:.1} % off", p90 * 100.0);
        assert!(p50 <= 0.02, "median {:.1} % off", p50 * 100.0);
    }

    #[test]
    fn each_pair_is_abba_after_an_uncounted_warm_up_pair() {
        let (out, order) = paired(3, 4, Duration::from_secs(600), false);
        assert_eq!(order, "abba".repeat(5));
        assert_eq!((out.a.len(), out.b.len(), out.ratios.len()), (4, 4, 4));
    }

    #[test]
    fn no_pair_starts_once_the_time_is_over() {
        // Each step is 1 s plus a 0.2 s drain, a pair four steps: at 4.8 s the warm-up pair is
        // done and the first counted pair begins in time (finished, it counts); at 9.6 s the
        // limit has passed and no pair starts.
        let (out, order) = paired(5, 9, Duration::from_secs(9), false);
        assert_eq!(order, "abbaabba");
        assert_eq!(out.ratios.len(), 1, "{out:?}");
    }

    #[test]
    fn a_side_that_moves_nothing_has_no_rate_and_no_ratio() {
        let (out, _) = paired(2, 3, Duration::from_secs(600), true);
        assert!(out.ratios.is_empty(), "{out:?}");
        assert_eq!(out.ratio(), None);
        assert!(out
            .a
            .iter()
            .all(|figure| matches!(figure, MaxRate::NotFound { .. })));
        assert!(out
            .b
            .iter()
            .all(|figure| matches!(figure, MaxRate::Found { .. })));
    }

    #[test]
    fn the_ratio_is_the_median_pairs_and_one_lucky_pair_of_either_side_does_not_decide_it() {
        // Pair 1: the raw side had the broker to itself for once (170 k); pair 4: the
        // backend did (95 k). Each side's highest figure would pair 95 k with 170 k (0.56),
        // a ratio no pair showed.
        let found = vec![
            (110_000.0, 170_000.0),
            (80_000.0, 100_000.0),
            (82_000.0, 101_000.0),
            (95_000.0, 100_000.0),
            (79_000.0, 99_000.0),
        ];
        let out = Paired {
            a: Vec::new(),
            b: Vec::new(),
            ratios: found.iter().map(|(a, b)| a / b).collect(),
            found,
        };
        let ratio = out.ratio().expect("a ratio");
        assert!((ratio - 0.8).abs() < 1e-9, "{ratio}");
        // The rates shown are the median pair's, so the table's rates give its ratio.
        assert_eq!(
            (out.rate(), out.raw_rate()),
            (Some(80_000.0), Some(100_000.0))
        );
        let (lo, hi) = out.spread().expect("a spread");
        assert!(lo <= ratio && ratio <= hi);
    }
}
