//! A precise open-loop pacer: message `i` of a schedule is *intended* at `anchor + i / rate`,
//! and [`Pacer::next`] returns when that instant comes (or at once, if it has passed: a late
//! producer sends at once and is never skipped, and its lateness stays visible because every
//! latency is measured from the intended time, as OpenMessaging Benchmark does).
//!
//! Why not `tokio::time::sleep_until`: tokio's timer wheel has a 1 ms granularity, so at 20,000
//! msgs/s (one message every 50 µs) messages leave in bursts up to a millisecond late and the
//! pacer, not the broker, sets the measured p50. Here the waiting is split three ways:
//!
//! - far from the deadline (more than [`COARSE_MARGIN`]): tokio's timer, which costs nothing
//!   while it waits;
//! - closer: a dedicated pacing thread sleeps with `std::thread::sleep` (nanosleep, with the
//!   thread's timer slack lowered to 1 µs where Linux allows it) until a little before the
//!   wake-up, spins the short rest with `spin_loop`, and wakes the producer task a little early,
//!   since a wake-up takes some microseconds to reach a tokio worker. Between two wake-ups
//!   at rates above one per [`COARSE_MARGIN`], the thread sleeps towards the next one it
//!   expects (the last plus the interval) instead of parking, so asking for a wake-up costs
//!   the producer no futex wake and the thread one sleep per message, not a park and a sleep;
//! - that last bit: the producer task spins until the deadline, so the send starts within a
//!   microsecond or so of it.
//!
//! Both "a little" margins are learnt as the run goes (twice the running mean of how late
//! nanosleep returns, and 1.5 times that of how long a wake-up takes to reach the task) and
//! capped at `SPIN_SHARE` (20 %) of the interval, within `MIN_SPIN`..[`MAX_SPIN`], so the
//! spinning stays a small part of each interval however loaded the machine is: a wake-up later
//! than that shows as publish delay (measured from the intended time), never as an early send.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

use crate::driver::{instant_at_ns, now_ns, ns_at};

/// Beyond this from the deadline the producer waits on tokio's timer (1 ms granularity, so
/// it may wake up to about a millisecond late: the margin keeps it ahead of the deadline).
pub const COARSE_MARGIN: Duration = Duration::from_millis(2);
/// The most the pacing thread spins before a wake-up, and the most the task yields before its
/// deadline: bounds the CPU the pacer takes from the broker on a loaded machine.
pub const MAX_SPIN: Duration = Duration::from_micros(25);
/// The least the pacing thread spins before a wake-up.
const MIN_SPIN: Duration = Duration::from_micros(2);
/// The most of each interval the thread, and then the task, may spin (between [`MIN_SPIN`] and
/// [`MAX_SPIN`]): at 20,000 msgs/s, 10 µs each of every 50 µs, so that pacing a fast
/// schedule does not take a core from the broker it measures; a wake-up that comes later than
/// that shows as publish delay, never as an early send. 5 % (2.5 µs) was below what a wake-up
/// takes to reach a tokio worker on a busy VM (10-20 µs), so most sends left that much late.
const SPIN_SHARE: f64 = 0.2;
/// Starting guess of nanosleep's overshoot and of a wake-up's hand-off, before any is measured.
const FIRST_GUESS_NS: u64 = 5_000;

/// 1 ns in the units of [`Pacer`]'s fixed-point interval (2^-32 ns).
const FP_ONE: f64 = 4_294_967_296.0;

/// No wake-up requested.
const NONE: u64 = u64::MAX;

/// One send permit: the message's index in the current schedule and its intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// Index of the message since the schedule was last anchored.
    pub index: u64,
    /// When the message is intended to be sent.
    pub intended: Instant,
    /// When the permit was handed out (never before `intended`): the send's start, read once
    /// so the caller need not read the clock again.
    pub at: Instant,
}

/// [`Permit`] on the harness's nanosecond clock ([`crate::driver::now_ns`]): the same
/// permit, as integers a producer can subtract for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsPermit {
    /// Index of the message since the schedule was last anchored.
    pub index: u64,
    /// When the message is intended to be sent, ns.
    pub intended_ns: u64,
    /// When the permit was handed out (never before `intended_ns`), ns.
    pub at_ns: u64,
}

/// A running mean in nanoseconds (weight 1/16 for each new sample), shared without locks.
struct Mean(AtomicU64);

impl Mean {
    fn new(ns: u64) -> Mean {
        Mean(AtomicU64::new(ns))
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Only one thread updates each mean, so load-then-store loses nothing.
    fn add(&self, sample: u64, cap: u64) {
        let old = self.get() as i64;
        let sample = sample.min(cap) as i64;
        self.0
            .store((old + (sample - old) / 16) as u64, Ordering::Relaxed);
    }
}

/// What the pacing thread and the producer task share.
struct Shared {
    /// The clock origin deadlines are counted from.
    origin: Instant,
    /// When the pacing thread should wake the task, ns since `origin` ([`NONE`] for never).
    wake_at_ns: AtomicU64,
    /// When the pacing thread last called `wake`, ns since `origin`.
    woke_ns: AtomicU64,
    /// How long a wake-up takes to reach the task (updated by the task).
    handoff: Mean,
    /// The schedule's interval, ns: between two requests the thread sleeps towards the next
    /// one it expects instead of parking and being unparked for every message.
    interval_ns: AtomicU64,
    /// The most the thread, and the task, spin before a deadline at this rate, ns.
    spin_cap_ns: AtomicU64,
    waker: AtomicWaker,
    stop: AtomicBool,
}

impl Shared {
    fn instant(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }
}

/// The open-loop schedule and the thread that keeps it; one per producer.
pub struct Pacer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    anchor: Instant,
    /// `anchor` on the [`crate::driver::now_ns`] clock.
    anchor_ns: u64,
    interval_ns: f64,
    /// `interval_ns` in units of 2^-32 ns: a permit's offset is one integer multiply, where the
    /// float product and its conversions cost more than the rest of the permit. Rounding it
    /// drifts the schedule by under a nanosecond per 4 billion messages.
    interval_fp: u128,
    index: u64,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("anchor", &self.anchor)
            .field("interval_ns", &self.interval_ns)
            .field("index", &self.index)
            .finish()
    }
}

impl Pacer {
    /// A schedule of `rate` messages per second starting now (the first permit is due at once).
    /// Spawns the pacing thread; if the system refuses a thread, waits fall back to tokio's
    /// timer followed by yielding (precise still, at the cost of a busy worker).
    pub fn new(rate: f64) -> Pacer {
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            wake_at_ns: AtomicU64::new(NONE),
            woke_ns: AtomicU64::new(0),
            handoff: Mean::new(FIRST_GUESS_NS),
            interval_ns: AtomicU64::new(0),
            spin_cap_ns: AtomicU64::new(MAX_SPIN.as_nanos() as u64),
            waker: AtomicWaker::new(),
            stop: AtomicBool::new(false),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mailroom-pacer".into())
            .spawn(move || pace(&for_thread))
            .ok();
        let mut pacer = Pacer {
            shared,
            thread,
            anchor: Instant::now(),
            anchor_ns: 0,
            interval_ns: 0.0,
            interval_fp: 0,
            index: 0,
        };
        pacer.set_rate(rate);
        pacer
    }

    /// Change the rate: the schedule restarts now at the new rate (the next permit is due at
    /// once), so a new rate never inherits the old schedule's debt or credit.
    pub fn set_rate(&mut self, rate: f64) {
        self.interval_ns = 1e9 / rate.max(1e-3);
        self.interval_fp = (self.interval_ns * FP_ONE) as u128;
        self.shared
            .interval_ns
            .store(self.interval_ns as u64, Ordering::Relaxed);
        let cap = (self.interval_ns * SPIN_SHARE) as u64;
        self.shared.spin_cap_ns.store(
            cap.clamp(MIN_SPIN.as_nanos() as u64, MAX_SPIN.as_nanos() as u64),
            Ordering::Relaxed,
        );
        // From the nanosecond clock, so that both schedules agree even when this is the first
        // reading of that clock (an Instant taken before its origin would read as 0).
        self.anchor_ns = now_ns();
        self.anchor = instant_at_ns(self.anchor_ns);
        self.index = 0;
    }

    /// The intended send time of message `index` of the current schedule.
    pub fn intended(&self, index: u64) -> Instant {
        self.anchor + Duration::from_nanos(self.offset_ns(index))
    }

    /// The next permit, returned at its intended time (or at once when that has passed).
    pub async fn next(&mut self) -> Permit {
        self.next_after(None).await
    }

    /// [`Pacer::next`], given the time the caller read last, just before (the end of its last
    /// send): when the permit is due by then, that reading is its hand-out time and the clock
    /// is not read again. A producer running behind its schedule reads the clock once per
    /// message instead of twice.
    pub async fn next_after(&mut self, now: Option<Instant>) -> Permit {
        let index = self.index;
        let intended = self.intended(index);
        self.index += 1;
        let at = match now {
            Some(now) if now >= intended => now,
            _ => self.wait_until(intended).await,
        };
        Permit {
            index,
            intended,
            at,
        }
    }

    /// [`Pacer::next_after`] on the [`crate::driver::now_ns`] clock: `now_ns` is the caller's
    /// last reading of that clock. A producer behind its schedule gets its permit with integer
    /// arithmetic alone; only a wait converts to an `Instant`.
    pub async fn next_ns(&mut self, now_ns: Option<u64>) -> NsPermit {
        if let Some(permit) = now_ns.and_then(|now| self.due_by(now)) {
            return permit;
        }
        let index = self.index;
        self.index += 1;
        let intended_ns = self.intended_ns(index);
        let at_ns = ns_at(self.wait_until(instant_at_ns(intended_ns)).await);
        NsPermit {
            index,
            intended_ns,
            at_ns: at_ns.max(intended_ns),
        }
    }

    /// The intended send time of message `index` of the current schedule, on the
    /// [`crate::driver::now_ns`] clock.
    pub fn intended_ns(&self, index: u64) -> u64 {
        self.anchor_ns + self.offset_ns(index)
    }

    /// Nanoseconds from the anchor to message `index` (rounded down).
    fn offset_ns(&self, index: u64) -> u64 {
        ((u128::from(index) * self.interval_fp) >> 32) as u64
    }

    /// The next permit if it is due by `now_ns` (the caller's last reading of the
    /// [`crate::driver::now_ns`] clock), handed out at that reading; `None`, taking nothing
    /// from the schedule, if the caller would have to wait for it. Lets a producer do what
    /// must come before a wait (publish what it batched) only when it is about to wait.
    pub fn due_by(&mut self, now_ns: u64) -> Option<NsPermit> {
        let intended_ns = self.intended_ns(self.index);
        if now_ns < intended_ns {
            return None;
        }
        let index = self.index;
        self.index += 1;
        Some(NsPermit {
            index,
            intended_ns,
            at_ns: now_ns,
        })
    }

    /// Wait until `due`, precisely (see the module docs); returns the time it returned at.
    pub async fn wait_until(&self, due: Instant) -> Instant {
        let now = Instant::now();
        if due <= now {
            return now;
        }
        if due - now > COARSE_MARGIN {
            tokio::time::sleep_until((due - COARSE_MARGIN).into()).await;
        }
        let cap = self.shared.spin_cap_ns.load(Ordering::Relaxed);
        let lead = Duration::from_nanos((self.shared.handoff.get() * 3 / 2).min(cap));
        let wake_at = due.checked_sub(lead).unwrap_or(due);
        if let Some(thread) = &self.thread {
            if Instant::now() < wake_at {
                ThreadWake {
                    shared: &self.shared,
                    thread: thread.thread(),
                    wake_at,
                }
                .await;
                let shared = &self.shared;
                let woke = shared.woke_ns.load(Ordering::Acquire);
                let now = shared.ns(Instant::now());
                if woke >= shared.ns(wake_at) {
                    shared
                        .handoff
                        .add(now.saturating_sub(woke), MAX_SPIN.as_nanos() as u64);
                }
            }
        }
        // At most the learnt lead (capped by the rate's spin share): a short spin on the worker
        // is cheaper than yielding, which makes tokio poll its I/O driver (a syscall) each round.
        loop {
            let now = Instant::now();
            if now >= due {
                return now;
            }
            std::hint::spin_loop();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Resolves once the pacing thread has woken it at (or after) `wake_at`.
struct ThreadWake<'a> {
    shared: &'a Shared,
    thread: &'a std::thread::Thread,
    wake_at: Instant,
}

impl std::future::Future for ThreadWake<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.wake_at {
            return Poll::Ready(());
        }
        // Registered before the deadline is published, so the thread's wake cannot be lost.
        self.shared.waker.register(cx.waker());
        self.shared
            .wake_at_ns
            .store(self.shared.ns(self.wake_at), Ordering::Release);
        // The thread parks while it has nothing to do; unparking costs a futex wake only
        // when it is actually parked.
        self.thread.unpark();
        if Instant::now() >= self.wake_at {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The pacing thread: wait for a requested wake-up, sleep until just before it, spin the rest,
/// wake the task.
fn pace(shared: &Shared) {
    lower_timer_slack();
    let overshoot = Mean::new(FIRST_GUESS_NS);
    let (min_spin, max_spin) = (MIN_SPIN.as_nanos() as u64, MAX_SPIN.as_nanos() as u64);
    // When the next request is expected (ns since origin), from the last one and the interval.
    let mut expected: Option<u64> = None;
    while !shared.stop.load(Ordering::Acquire) {
        let cap = shared.spin_cap_ns.load(Ordering::Relaxed);
        let margin = Duration::from_nanos((overshoot.get() * 2).min(cap).max(min_spin));
        let at_ns = shared.wake_at_ns.load(Ordering::Acquire);
        if at_ns == NONE {
            // The task asks for its next wake-up a few microseconds after this one: rather
            // than park and be unparked for each, sleep towards when it will be due. Only
            // once per request: if none comes, park.
            if let Some(next) = expected.take() {
                let target = shared.instant(next).checked_sub(margin);
                let now = Instant::now();
                if let Some(target) = target.filter(|t| *t > now) {
                    std::thread::sleep(target - now);
                    let late = Instant::now().saturating_duration_since(target);
                    overshoot.add(late.as_nanos() as u64, max_spin);
                }
                continue;
            }
            // The producer unparks us when it asks for a wake-up (and `Drop` when it stops).
            std::thread::park();
            continue;
        }
        let at = shared.instant(at_ns);
        let now = Instant::now();
        if at > now {
            let left = at - now;
            if left > margin {
                let target = at - margin;
                std::thread::sleep(target - now);
                let late = Instant::now().saturating_duration_since(target);
                overshoot.add(late.as_nanos() as u64, max_spin);
                // The request may have changed while asleep: look again.
                continue;
            }
            while Instant::now() < at {
                std::hint::spin_loop();
            }
        }
        if shared
            .wake_at_ns
            .compare_exchange(at_ns, NONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            shared
                .woke_ns
                .store(shared.ns(Instant::now()), Ordering::Release);
            shared.waker.wake();
            // Only at rates where the task comes back within the coarse margin: slower ones
            // go through tokio's timer anyway, and this bounds how long `Drop` waits.
            let interval = shared.interval_ns.load(Ordering::Relaxed);
            expected = (interval < COARSE_MARGIN.as_nanos() as u64)
                .then(|| at_ns.saturating_add(interval));
        }
    }
}

/// Ask Linux for a 1 µs timer slack on this thread (the default, 50 µs, lets a nanosleep
/// overshoot by that much: a whole interval at 20,000 msgs/s). The file is
/// `/proc/<tid>/timerslack_ns`: `/proc/thread-self/` has none, and `/proc/self/`'s is the
/// main thread's. Writing one's own needs no privilege; elsewhere, or if refused, the learnt
/// spin margin absorbs what it can and the rest shows as publish delay.
fn lower_timer_slack() {
    if let Some(tid) = own_tid() {
        let _ = std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1000");
    }
}

/// The calling thread's id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
fn own_tid() -> Option<String> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    Some(link.file_name()?.to_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a schedule until its intended times pass `span`, recording each permit and when it
    /// was handed out.
    async fn run(rate: f64, span: Duration) -> (Pacer, Vec<(Permit, Instant)>) {
        let mut pacer = Pacer::new(rate);
        let end = pacer.intended(0) + span;
        let mut got = Vec::new();
        loop {
            let permit = pacer.next().await;
            if permit.intended >= end {
                break;
            }
            got.push((permit, permit.at));
        }
        (pacer, got)
    }

    fn micros(d: Duration) -> u64 {
        d.as_micros() as u64
    }

    /// The pacing thread's nanosleeps overshoot by the timer slack (50 µs by default), as much
    /// as a whole interval at 20,000 msgs/s: the slack must really be lowered where Linux has
    /// the file for it.
    #[test]
    fn the_pacing_thread_lowers_its_own_timer_slack() {
        if !std::path::Path::new("/proc/self/timerslack_ns").exists() {
            return;
        }
        let read = || {
            let tid = own_tid().expect("a thread id from /proc/thread-self");
            std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns"))
                .expect("the thread's timer slack")
                .trim()
                .parse::<u64>()
                .expect("a number")
        };
        let (before, after) = std::thread::spawn(move || {
            let before = read();
            lower_timer_slack();
            (before, read())
        })
        .join()
        .expect("the thread");
        assert_eq!(
            after, 1000,
            "timer slack {before} ns before, {after} ns after"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permits_follow_the_rate_schedule_and_never_come_early() {
        let rate = 20_000.0;
        let span = Duration::from_millis(300);
        let cpu = crate::cpu::process_cpu_seconds();
        let (pacer, got) = run(rate, span).await;
        let cpu = crate::cpu::process_cpu_seconds() - cpu;
        // Exactly the schedule's instants in [anchor, anchor + span): none skipped, none extra.
        let expected = (span.as_secs_f64() * rate).ceil() as usize;
        assert_eq!(
            got.len(),
            expected,
            "permits issued in {span:?} at {rate}/s"
        );
        let interval = Duration::from_secs_f64(1.0 / rate);
        for (i, (permit, at)) in got.iter().enumerate() {
            assert_eq!(permit.index, i as u64, "permits are numbered in order");
            assert_eq!(permit.intended, pacer.intended(i as u64));
            assert!(
                *at >= permit.intended,
                "permit {i} handed out before its time"
            );
            if i > 0 {
                let gap = permit.intended - got[i - 1].0.intended;
                let off = gap.abs_diff(interval);
                assert!(off <= Duration::from_nanos(2), "permit {i}: gap {gap:?}");
            }
        }
        let mut lateness: Vec<u64> = got.iter().map(|(p, at)| micros(*at - p.intended)).collect();
        lateness.sort_unstable();
        let q = |f: f64| lateness[((lateness.len() - 1) as f64 * f) as usize];
        eprintln!(
            "pacer lateness at {rate}/s over {} permits: p50 {} us, p99 {} us, max {} us; process CPU {cpu:.2} s in {span:?}",
            lateness.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
        // Only a guard against a hang or a lost wake-up, not a speed test.
        assert!(q(1.0) < 1_000_000, "a permit came a second late");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ns_permits_keep_the_instant_schedule_and_never_come_early() {
        let mut pacer = Pacer::new(10_000.0);
        let mut last = None;
        for i in 0..200u64 {
            let permit = pacer.next_ns(last).await;
            let now = crate::driver::now_ns();
            assert_eq!(permit.index, i);
            assert!(permit.at_ns >= permit.intended_ns, "permit {i} early");
            assert!(
                now >= permit.intended_ns,
                "permit {i} handed out before its time"
            );
            let expected = ns_at(pacer.intended(i));
            assert!(
                permit.intended_ns.abs_diff(expected) <= 1,
                "permit {i}: {} ns, the Instant schedule says {expected} ns",
                permit.intended_ns
            );
            // Every third permit the caller says it is behind: no wait, the reading kept.
            last = (i % 3 == 0).then_some(now);
        }
    }

    #[test]
    fn due_by_hands_out_only_permits_due_by_the_reading() {
        let mut pacer = Pacer::new(1_000.0);
        let first = pacer.intended_ns(0);
        let permit = pacer.due_by(first + 5).expect("due by then");
        assert_eq!(
            permit,
            NsPermit {
                index: 0,
                intended_ns: first,
                at_ns: first + 5
            }
        );
        let second = pacer.intended_ns(1);
        assert_eq!(second - first, 1_000_000);
        assert_eq!(pacer.due_by(second - 1), None, "not due yet");
        // A refusal takes nothing from the schedule: the next permit is still index 1.
        assert_eq!(pacer.due_by(second - 1), None);
        assert_eq!(
            pacer.due_by(second),
            Some(NsPermit {
                index: 1,
                intended_ns: second,
                at_ns: second
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_rate_restarts_the_schedule_from_now() {
        let mut pacer = Pacer::new(1_000.0);
        for _ in 0..3 {
            pacer.next().await;
        }
        let before = Instant::now();
        pacer.set_rate(500.0);
        let first = pacer.next().await;
        let second = pacer.next().await;
        assert_eq!((first.index, second.index), (0, 1));
        assert!(first.intended >= before);
        assert_eq!(second.intended - first.intended, Duration::from_millis(2));
        // Waits longer than the coarse margin go through tokio's timer first.
        let due = Instant::now() + COARSE_MARGIN * 3;
        let at = pacer.wait_until(due).await;
        assert!(at >= due && Instant::now() >= at);
    }
}
