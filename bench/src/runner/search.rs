//! The max-rate search (`producerRate: 0`), run as the warm-up: climb, then bracket.
//!
//! A step is *sustained* when, over its steady second half, the producers reach its rate, the
//! consumers keep pace with them, and the backlog's median stays under `acceptableBacklog`.
//! The first half of a step is never judged: it is the broker settling on the new rate (a
//! Kafka producer filling its first batches, a consumer's fetch catching up), and a single
//! end-of-step backlog sample read one stall of a loaded machine (150 ms of a 2-core box
//! compiling) as the broker's limit; the median over the second half does not.
//!
//! The search climbs by 1.5x per short step ([`CLIMB_STEP`]) until a step is missed, then
//! bisects (geometric mean) between the highest sustained and the lowest missed rate with
//! longer *deciding* steps ([`DECIDING_STEP`]). A miss only counts once a deciding step at that
//! rate confirmed it: a missed climbing step is tried again as a deciding step, and a missed
//! deciding step is tried once more (a pass counts at once: a stall can make a step miss, never
//! pass). When the bracket is within [`CONVERGED`] (below what two deciding steps at the same
//! rate agree on, on a busy 2-core machine), its upper end is tried once more, twice if it
//! misses: two misses in a row can both fall in one busy spell of the machine (a neighbour
//! compiling for a few seconds), and a figure decided there is that spell's, not the broker's;
//! a pass then climbs on from there. The search stops after that, or when its time is over; a
//! step that has begun is finished, so a figure is never decided by a step cut short. After a
//! miss the producers slow to the floor until the backlog is drained (at most
//! [`DRAIN_LIMIT`]), so the next step starts clean.
//!
//! The decisions are made over a [`Probe`] (hold a rate, measure it), so they are tested on a
//! simulated broker without any timing (see the tests below).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::progress::Progress;
use super::state::RunState;
use super::SEARCH_FLOOR_DIVISOR;
use crate::result::MaxRate;
use crate::workload::Plan;

/// Step of the search while it climbs (judged on its last half).
pub(super) const CLIMB_STEP: Duration = Duration::from_millis(500);
/// Step that decides between the bracket's ends (judged on its last half, 1 s): long enough that
/// a stall of a hundred milliseconds moves its figures by a tenth, not by half as in a 0.25 s
/// window, and short enough that three bisections fit in the warm-up after the climb.
const DECIDING_STEP: Duration = Duration::from_secs(2);
/// The search stops bisecting once the highest sustained and the lowest missed rate are this
/// close (as a ratio).
const CONVERGED: f64 = 1.05;
/// Longest the search waits for the first message to come through before it starts.
const FIRST_MESSAGE_LIMIT: Duration = Duration::from_secs(10);
/// Longest a drain after a missed step may take.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How often the backlog is sampled during a step's judged half.
const BACKLOG_SAMPLE: Duration = Duration::from_millis(20);
/// Producers must reach this share of a step's rate, and consumers this share of what was
/// published, over the judged half.
const KEEP_UP: f64 = 0.9;
/// Misses in a row at one rate before it counts (the first may be a climbing step).
const MISSES_TO_COUNT: u32 = 2;
/// How much a climbing step raises the rate on a first search.
const CLIMB: f64 = 1.5;

/// What one step measured over its judged (second) half.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct StepFigures {
    /// Confirmed sends per second, all producers.
    pub(super) achieved: f64,
    /// Receives per second per subscription (comparable with `achieved`).
    pub(super) consumed: f64,
    /// Median of the backlog samples.
    pub(super) backlog_median: i64,
    /// Backlog when the step ended (for the trace).
    pub(super) backlog_end: i64,
}

/// How the search drives a run: what it asks of the producers and what it reads back.
pub(super) trait Probe {
    /// Hold `rate` (msgs/s over all producers) for `hold` and measure its second half.
    fn step(&self, rate: f64, hold: Duration) -> impl Future<Output = StepFigures>;
    /// Closed loop for `hold` (producers as fast as the backlog bound lets them, see
    /// [`super::state::RunState::set_closed_loop`]), measured after its first `settle`.
    fn saturate(&self, settle: Duration, hold: Duration) -> impl Future<Output = StepFigures>;
    /// Producers at `floor` until what is in flight (backlog and unconfirmed sends) is down to
    /// a quarter of what is acceptable, or [`DRAIN_LIMIT`] has passed.
    fn drain(&self, floor: f64) -> impl Future<Output = ()>;
    /// Producers at `floor` until a first message came through, or [`FIRST_MESSAGE_LIMIT`].
    fn first_message(&self, floor: f64) -> impl Future<Output = ()>;
    /// Producers at `floor` until the next step: the other side of a paired measurement is
    /// stepping, and this side's producers must not take the machine (or the broker) from it.
    fn idle(&self, floor: f64);
    /// Whether the search's time is over (checked before each new step).
    fn expired(&self) -> bool;
    /// Whether a producer or consumer task has stopped (the run has failed).
    fn failed(&self) -> bool;
    /// Seconds since the run started, for the trace.
    fn elapsed(&self) -> f64;
    /// Show what the search is doing on the live progress line.
    fn show(&self, line: &str);
}

/// Why a step was missed, or `None` when it was sustained.
fn judge(rate: f64, s: &StepFigures, acceptable_backlog: i64) -> Option<String> {
    let (achieved, consumed) = (s.achieved, s.consumed);
    if achieved < rate * KEEP_UP {
        Some(format!(
            "producers reached {achieved:.0} of {rate:.0} msgs/s"
        ))
    } else if consumed < achieved * KEEP_UP {
        Some(format!(
            "consumers took {consumed:.0} msgs/s of {achieved:.0} published; backlog grew to {}",
            s.backlog_end
        ))
    } else if s.backlog_median > acceptable_backlog {
        Some(format!(
            "backlog {} (median of the step's second half) over acceptableBacklog {acceptable_backlog}",
            s.backlog_median
        ))
    } else {
        None
    }
}

/// The search's decisions, one step at a time: which step comes next, and what a step's
/// figures change. [`search`] drives one over a probe.
struct Searcher {
    /// Never below this: a broker that cannot sustain even that gets an honest "no
    /// sustainable rate" rather than a search collapsing towards 1 msg/s.
    floor: f64,
    /// The next step's rate.
    rate: f64,
    lowest: f64,
    sustained: Option<f64>,
    missed: Option<f64>,
    /// The rate whose miss is being confirmed by a deciding step, if any.
    confirming: Option<f64>,
    /// Misses in a row at `confirming`.
    misses: u32,
    /// Whether the converged bracket's upper end was tried once more.
    retried: bool,
    /// `missed` was taken before any rate was sustained, unconfirmed (a stall in the first
    /// steps would otherwise cap the figure): it is tried again as a deciding step once a
    /// lower rate is sustained.
    miss_unconfirmed: bool,
    lowest_miss: String,
    done: bool,
}

impl Searcher {
    fn new(initial: f64, floor: f64) -> Searcher {
        Searcher {
            floor,
            rate: initial,
            lowest: initial,
            sustained: None,
            missed: None,
            confirming: None,
            misses: 0,
            retried: false,
            miss_unconfirmed: false,
            lowest_miss: String::from("the search ended before its first step"),
            done: false,
        }
    }

    /// The next step (rate, hold), or `None` once the search has converged.
    fn next(&self) -> Option<(f64, Duration)> {
        if self.done {
            return None;
        }
        let deciding =
            self.confirming.is_some() || (self.sustained.is_some() && self.missed.is_some());
        Some((self.rate, if deciding { DECIDING_STEP } else { CLIMB_STEP }))
    }

    /// Take a step's figures (of the step [`Searcher::next`] gave); returns whether the
    /// producers should drain the backlog before the next step.
    fn record(&mut self, step: &StepFigures, acceptable_backlog: i64) -> bool {
        let rate = self.rate;
        self.lowest = self.lowest.min(rate);
        let verdict = judge(rate, step, acceptable_backlog);
        // Why the search went where it went, for whoever reads a surprising figure
        // (`RUST_LOG=mailroom_bench=debug`).
        tracing::debug!(
            rate,
            achieved = step.achieved,
            consumed = step.consumed,
            backlog_median = step.backlog_median,
            backlog_end = step.backlog_end,
            miss = verdict.as_deref().unwrap_or("-"),
            "max-rate search step"
        );
        let mut drain = false;
        match verdict {
            None => {
                self.sustained = Some(self.sustained.map_or(rate, |s: f64| s.max(rate)));
                self.confirming = None;
                self.misses = 0;
                if let Some(miss) = self.missed.filter(|_| self.miss_unconfirmed) {
                    if rate >= miss {
                        // The early miss was a stall: the climb goes on from here.
                        self.missed = None;
                        self.miss_unconfirmed = false;
                    } else {
                        self.confirming = Some(miss);
                        self.rate = miss;
                        return false;
                    }
                }
            }
            Some(why) => {
                if self.sustained.is_some() {
                    // Start the next step clean.
                    drain = true;
                    // Once a rate was sustained, a miss decides the figure: it counts only
                    // when a deciding step at that rate misses too.
                    if self.confirming != Some(rate) {
                        self.confirming = Some(rate);
                        self.misses = 0;
                    }
                    self.misses += 1;
                    if self.misses < MISSES_TO_COUNT {
                        return drain;
                    }
                }
                if self.sustained.is_some() {
                    self.miss_unconfirmed = false;
                } else if self.missed.is_none() {
                    self.miss_unconfirmed = true;
                }
                self.confirming = None;
                self.misses = 0;
                if rate <= self.lowest {
                    self.lowest_miss = why;
                }
                self.missed = Some(self.missed.map_or(rate, |m: f64| m.min(rate)));
            }
        }
        self.rate = match (self.sustained, self.missed) {
            (Some(ok), None) => ok * CLIMB,
            (Some(ok), Some(miss)) => {
                if miss / ok <= CONVERGED || miss <= ok {
                    if !self.retried && miss > ok {
                        // The upper end once more, counted afresh (see the module's comment).
                        self.retried = true;
                        self.missed = None;
                        self.confirming = Some(miss);
                        self.misses = 0;
                        self.rate = miss;
                        return drain;
                    }
                    self.done = true;
                    return drain;
                }
                (ok * miss).sqrt()
            }
            // Nothing sustained yet: below what was achieved, so the consumers catch up, but
            // at most halved (consumers still starting take next to nothing in their first
            // step) and never below the floor.
            (None, Some(miss)) => {
                if miss <= self.floor {
                    self.done = true;
                    return drain;
                }
                (step.achieved.min(step.consumed) * 0.8)
                    .max(miss / 2.0)
                    .max(self.floor)
                    .min(miss * 0.9)
            }
            (None, None) => rate,
        };
        drain
    }

    fn outcome(&self) -> MaxRate {
        match self.sustained {
            Some(rate) => MaxRate::Found { rate },
            None => MaxRate::NotFound {
                lowest_step: self.lowest,
                reason: self.lowest_miss.clone(),
            },
        }
    }
}

/// One step of `searcher` on `probe`, traced; drains after a miss that asks for it.
async fn take_step<P: Probe>(
    probe: &P,
    searcher: &mut Searcher,
    acceptable_backlog: i64,
    trace: &mut Vec<(f64, f64, i64)>,
) {
    let Some((rate, hold)) = searcher.next() else {
        return;
    };
    let step = probe.step(rate, hold).await;
    trace.push((probe.elapsed(), rate, step.backlog_end));
    if searcher.record(&step, acceptable_backlog) {
        probe.drain(searcher.floor).await;
    }
    probe.show(&format!(
        "searching max rate: tried {:.0} msgs/s, next {:.0}",
        step.achieved, searcher.rate
    ));
}

/// The search's decisions, over any [`Probe`]. `initial` is `producerStartRate`; every step is
/// appended to `trace` as (seconds since the run started, rate, backlog at its end).
pub(super) async fn search<P: Probe>(
    probe: &P,
    initial: f64,
    acceptable_backlog: i64,
    trace: &mut Vec<(f64, f64, i64)>,
) -> MaxRate {
    let floor = (initial / SEARCH_FLOOR_DIVISOR).max(1.0);
    // Consumers still joining (a Kafka group takes seconds) take nothing, and a first step
    // would read that as the broker's capacity: trickle at the floor until a first message has
    // come through (the probe gives the search its full time after that).
    probe.first_message(floor).await;
    let mut searcher = Searcher::new(initial, floor);
    while !searcher.done && !probe.expired() && !probe.failed() {
        take_step(probe, &mut searcher, acceptable_backlog, trace).await;
    }
    searcher.outcome()
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
    /// Search from `initial`; every step is appended to `trace` as (seconds since `start`,
    /// rate, backlog). Returns what it concluded (the caller holds that rate).
    pub(super) async fn run(
        &self,
        initial: f64,
        trace: &mut Vec<(f64, f64, i64)>,
        start: Instant,
        failed: impl Fn() -> bool,
    ) -> MaxRate {
        let probe = self.probe(start, failed);
        search(&probe, initial, self.plan.acceptable_backlog as i64, trace).await
    }

    /// A [`Probe`] on this run; `failed` tells whether the run has failed.
    pub(super) fn probe<F: Fn() -> bool>(&self, start: Instant, failed: F) -> RunProbe<'_, '_, F> {
        RunProbe {
            search: self,
            start,
            until: std::cell::Cell::new(self.until),
            failed,
        }
    }
}

/// The [`Probe`] of a real run: sets the producers' rate and reads the run's counters.
pub(super) struct RunProbe<'a, 'b, F> {
    search: &'a Search<'b>,
    start: Instant,
    /// When the search's time is over; pushed back by the wait for a first message.
    until: std::cell::Cell<Instant>,
    failed: F,
}

impl<F: Fn() -> bool> RunProbe<'_, '_, F> {
    fn state(&self) -> &RunState {
        self.search.state
    }

    fn set_rate(&self, rate: f64) {
        self.state().set_rate(rate / self.search.producers_total);
    }

    fn counters(&self) -> (u64, u64) {
        (
            self.state().sent_total.load(Ordering::Relaxed),
            self.state().received_total.load(Ordering::Relaxed),
        )
    }

    fn backlog(&self) -> i64 {
        let (sent, received) = self.counters();
        (sent as i64 * self.search.subs - received as i64).max(0)
    }

    /// Wait out the `settle` start of a step of `hold` (the broker settling on what it was
    /// just asked) and measure the rest.
    async fn measure_after(&self, settle: Duration, hold: Duration) -> StepFigures {
        tokio::time::sleep(settle).await;
        let t0 = Instant::now();
        let end = t0 + hold.saturating_sub(settle);
        let (sent0, received0) = self.counters();
        let mut samples = Vec::new();
        loop {
            samples.push(self.backlog());
            let now = Instant::now();
            if now >= end {
                break;
            }
            tokio::time::sleep(BACKLOG_SAMPLE.min(end - now)).await;
        }
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        let (sent1, received1) = self.counters();
        samples.sort_unstable();
        StepFigures {
            achieved: (sent1 - sent0) as f64 / secs,
            consumed: (received1 - received0) as f64 / secs / self.search.subs as f64,
            backlog_median: samples[samples.len() / 2],
            backlog_end: self.backlog(),
        }
    }
}

impl<F: Fn() -> bool> Probe for RunProbe<'_, '_, F> {
    async fn step(&self, rate: f64, hold: Duration) -> StepFigures {
        self.set_rate(rate);
        self.measure_after(hold / 2, hold).await
    }

    async fn saturate(&self, settle: Duration, hold: Duration) -> StepFigures {
        self.state()
            .set_closed_loop(self.search.plan.acceptable_backlog);
        self.measure_after(settle, hold).await
    }

    async fn drain(&self, floor: f64) {
        self.set_rate(floor);
        let limit = Instant::now() + DRAIN_LIMIT;
        let target = self.search.plan.acceptable_backlog / 4;
        // Sends still unconfirmed count too: a client's local queue drains into the broker the
        // other side of a paired measurement uses next.
        let subs = self.search.subs as u64;
        while self.state().in_flight(subs) > target && Instant::now() < limit && !self.expired() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn first_message(&self, floor: f64) {
        let waiting = Instant::now();
        self.set_rate(floor);
        while self.state().received_total.load(Ordering::Relaxed) == 0
            && waiting.elapsed() < FIRST_MESSAGE_LIMIT
            && !(self.failed)()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.until.set(self.search.until + waiting.elapsed());
    }

    fn idle(&self, floor: f64) {
        self.set_rate(floor);
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.until.get()
    }

    fn failed(&self) -> bool {
        (self.failed)()
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn show(&self, line: &str) {
        self.search.progress.show(line);
    }
}

#[cfg(test)]
mod tests {
    //! The search on a simulated broker: a step is sustained up to a capacity, with scripted
    //! stalls; time is virtual (each step adds its hold), so nothing here depends on timing.

    use std::cell::{Cell, RefCell};

    use super::*;

    /// A broker that sustains any rate up to `capacity`, except for the steps listed in
    /// `stalls` (by index), which look like a machine stall: consumers fall behind.
    struct Simulated {
        capacity: f64,
        stalls: Vec<usize>,
        budget: Duration,
        spent: Cell<Duration>,
        steps: RefCell<Vec<(f64, Duration)>>,
    }

    impl Simulated {
        fn new(capacity: f64, stalls: &[usize]) -> Self {
            Simulated {
                capacity,
                stalls: stalls.to_vec(),
                budget: Duration::from_secs(14),
                spent: Cell::new(Duration::ZERO),
                steps: RefCell::new(Vec::new()),
            }
        }
    }

    impl Probe for Simulated {
        async fn step(&self, rate: f64, hold: Duration) -> StepFigures {
            let index = self.steps.borrow().len();
            self.steps.borrow_mut().push((rate, hold));
            self.spent.set(self.spent.get() + hold);
            // Above its capacity the broker pushes back: producers fall well short.
            let achieved = if rate <= self.capacity {
                rate
            } else {
                self.capacity * 0.8
            };
            let consumed = if self.stalls.contains(&index) {
                achieved * 0.5
            } else {
                achieved
            };
            let backlog = if consumed < achieved * KEEP_UP {
                50_000
            } else {
                100
            };
            StepFigures {
                achieved,
                consumed,
                backlog_median: backlog,
                backlog_end: backlog,
            }
        }

        async fn saturate(&self, _settle: Duration, _hold: Duration) -> StepFigures {
            unreachable!("the search takes no saturation steps")
        }

        async fn drain(&self, _floor: f64) {
            self.spent
                .set(self.spent.get() + Duration::from_millis(200));
        }

        async fn first_message(&self, _floor: f64) {}

        fn idle(&self, _floor: f64) {}

        fn expired(&self) -> bool {
            self.spent.get() >= self.budget
        }

        fn failed(&self) -> bool {
            false
        }

        fn elapsed(&self) -> f64 {
            self.spent.get().as_secs_f64()
        }

        fn show(&self, _line: &str) {}
    }

    fn run(sim: &Simulated, initial: f64) -> (MaxRate, Vec<(f64, f64, i64)>) {
        let mut trace = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let found = rt.block_on(search(sim, initial, 5_000, &mut trace));
        (found, trace)
    }

    fn found(outcome: &MaxRate) -> f64 {
        match outcome {
            MaxRate::Found { rate } => *rate,
            other => panic!("expected a rate, got {other:?}"),
        }
    }

    #[test]
    fn finds_the_capacity_within_the_bracket() {
        let sim = Simulated::new(100_000.0, &[]);
        let (outcome, trace) = run(&sim, 10_000.0);
        let rate = found(&outcome);
        assert!(
            (100_000.0 / 1.12..=100_000.0).contains(&rate),
            "found {rate}, trace {trace:?}"
        );
        assert_eq!(trace.len(), sim.steps.borrow().len());
    }

    #[test]
    fn a_stall_while_climbing_does_not_decide_the_figure() {
        let calm = Simulated::new(100_000.0, &[]);
        let calm_rate = found(&run(&calm, 10_000.0).0);
        // Step 2 (22,500 msgs/s, far below capacity) stalls: with a miss taken at its word the
        // figure would be 15,000.
        let stalled = Simulated::new(100_000.0, &[2]);
        let (outcome, trace) = run(&stalled, 10_000.0);
        let rate = found(&outcome);
        assert!(
            (calm_rate / 1.12..=100_000.0).contains(&rate),
            "calm {calm_rate}, with a stall {rate}, trace {trace:?}"
        );
        // The stalled rate was tried again as a deciding step, and it passed.
        let steps = stalled.steps.borrow();
        assert_eq!(steps[3].0, steps[2].0);
        assert_eq!(steps[3].1, DECIDING_STEP);
    }

    #[test]
    fn a_missed_deciding_step_is_repeated_before_it_counts() {
        // Climb: 10k, 15k, 22.5k, 33.75k, 50.6k, 75.9k pass (steps 0-5); 113.9k misses (6) and
        // misses its deciding repeat (7); the first bisection, 93k, passes (8); the next,
        // 102.9k, misses (9): a stall, scripted; its repeat (10) passes and counts.
        let sim = Simulated::new(105_000.0, &[9]);
        let (outcome, trace) = run(&sim, 10_000.0);
        let steps = sim.steps.borrow();
        assert!(steps.len() >= 11, "trace {trace:?}");
        assert_eq!(steps[9], steps[10], "trace {trace:?}");
        assert_eq!(steps[10].1, DECIDING_STEP);
        let rate = found(&outcome);
        assert!(
            (steps[10].0..=105_000.0).contains(&rate),
            "found {rate}, trace {trace:?}"
        );
    }

    #[test]
    fn a_miss_confirmed_twice_bounds_the_bracket() {
        let sim = Simulated::new(60_000.0, &[]);
        let (outcome, trace) = run(&sim, 10_000.0);
        let rate = found(&outcome);
        assert!(rate <= 60_000.0, "found {rate}, trace {trace:?}");
        let steps = sim.steps.borrow();
        // Every missed rate above capacity was held as a deciding step before it counted.
        for (i, (r, hold)) in steps.iter().enumerate() {
            if *r > 60_000.0 && *hold == CLIMB_STEP {
                assert_eq!(steps[i + 1], (*r, DECIDING_STEP), "trace {trace:?}");
            }
        }
    }

    #[test]
    fn the_converged_upper_end_is_tried_once_more() {
        // As above, but 102.9k (steps 9 and 10) stalls twice, under the 105k capacity: the
        // bracket closes on 100.3k (12) below it, and the repeat of 102.9k (13) passes.
        let mut sim = Simulated::new(105_000.0, &[9, 10]);
        sim.budget = Duration::from_secs(60);
        let (outcome, trace) = run(&sim, 10_000.0);
        let steps = sim.steps.borrow();
        assert!(steps.len() >= 14, "trace {trace:?}");
        assert_eq!(steps[13], (steps[9].0, DECIDING_STEP), "trace {trace:?}");
        let rate = found(&outcome);
        assert!(
            (steps[9].0..=105_000.0).contains(&rate),
            "found {rate}, trace {trace:?}"
        );
    }

    #[test]
    fn a_broker_below_the_floor_has_no_sustainable_rate() {
        let sim = Simulated::new(10.0, &[]);
        let (outcome, trace) = run(&sim, 10_000.0);
        match outcome {
            MaxRate::NotFound {
                lowest_step,
                reason,
            } => {
                assert!(
                    lowest_step <= 100.0,
                    "lowest {lowest_step}, trace {trace:?}"
                );
                assert!(
                    reason.contains("producers reached") || reason.contains("consumers"),
                    "{reason}"
                );
            }
            other => panic!("expected no rate, got {other:?} (trace {trace:?})"),
        }
    }

    #[test]
    fn a_judged_step_uses_the_median_backlog_not_one_sample() {
        let figures = StepFigures {
            achieved: 50_000.0,
            consumed: 49_000.0,
            backlog_median: 800,
            backlog_end: 40_000,
        };
        assert_eq!(judge(50_000.0, &figures, 5_000), None);
        let growing = StepFigures {
            backlog_median: 9_000,
            ..figures
        };
        let why = judge(50_000.0, &growing, 5_000).expect("a miss");
        assert!(why.contains("median"), "{why}");
    }
}
