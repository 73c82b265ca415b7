//! The live state of one run: the flags, rate and counters its tasks share, and latency
//! histograms split per task so that recording never contends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use mailroom_core::{Error, Result};

use super::recorder::{self, Reader, Recorder};
use super::HIST_MAX_US;

pub(super) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3)
        .map_err(|e| Error::config(format!("histogram: {e}")))
}

/// The per-producer rate of the closed loop: no schedule to keep (every send is due at once).
const UNPACED_RATE: f64 = 1e12;
/// Longest a closed-loop producer waits for room before it reads the backlog again.
const ROOM_WAIT_LIMIT: Duration = Duration::from_millis(5);

/// The recording end of one task's part of a [`Hists`]: owned by that task alone.
pub(super) type Part = Recorder;

/// A histogram split into one part per task, so recording never contends and takes no lock;
/// `take` merges what the parts recorded since the last `take`.
pub(super) struct Hists {
    template: Histogram<u64>,
    readers: Mutex<Vec<Reader>>,
}

impl Hists {
    fn new() -> Result<Hists> {
        Ok(Hists {
            template: histogram()?,
            readers: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn part(&self) -> Part {
        let (recorder, reader) = recorder::pair(HIST_MAX_US);
        if let Ok(mut readers) = self.readers.lock() {
            readers.push(reader);
        }
        recorder
    }

    pub(super) fn take(&self) -> Histogram<u64> {
        let mut out = self.template.clone();
        if let Ok(mut readers) = self.readers.lock() {
            for reader in readers.iter_mut() {
                reader.merge_new(&mut out);
            }
        }
        out
    }
}

pub(super) fn record(part: &Part, us: u64) {
    part.record(us);
}

/// A value alone on its cache line (128 bytes: adjacent-line prefetch pairs 64-byte lines), so
/// the counters producers bump and those consumers bump, on different cores, do not make each
/// other's cache line bounce for every message.
#[repr(align(128))]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The live state of one run, read and written by its producers, its consumers and the loop that
/// paces them: stop flags, the target rate, counters and latency histograms.
pub(super) struct RunState {
    pub(super) stop_producers: AtomicBool,
    pub(super) stop_consumers: AtomicBool,
    pub(super) consumers_paused: AtomicBool,
    /// Per-producer rate in msgs/s, as f64 bits.
    pub(super) rate_bits: AtomicU64,
    /// Bumped when the rate changes: producers re-anchor their schedule to now.
    pub(super) epoch: AtomicU64,
    /// Closed loop ([`RunState::set_closed_loop`]) when above 0: producers send as fast as they
    /// can while the backlog (all subscriptions) is at most this, and wait when it is over.
    pub(super) backlog_gate: AtomicU64,
    /// A producer waits for the backlog to fall ([`RunState::wake_producers`] ends the wait).
    pub(super) producers_waiting: AtomicBool,
    /// Where waiting producers park until a consumer has taken some of the backlog.
    pub(super) room: Notify,
    /// Sends begun, ever, published a batch at a time (see `in_flight`).
    pub(super) started_total: Padded<AtomicU64>,
    /// Confirmed sends, ever (the backlog; periods count from its value at their start).
    pub(super) sent_total: Padded<AtomicU64>,
    pub(super) send_errors: Padded<AtomicU64>,
    /// Messages received, ever.
    pub(super) received_total: Padded<AtomicU64>,
    /// The latest intended send time (µs) among received messages: when it passes the start
    /// of a drain on an in-order broker, everything sent before the drain has arrived.
    pub(super) newest_received_intended_us: Padded<AtomicU64>,
    pub(super) first_error: Mutex<Option<String>>,
    pub(super) publish: Hists,
    pub(super) delay: Hists,
    pub(super) e2e: Hists,
}

impl RunState {
    pub(super) fn new() -> Result<RunState> {
        Ok(RunState {
            stop_producers: AtomicBool::new(false),
            stop_consumers: AtomicBool::new(false),
            consumers_paused: AtomicBool::new(false),
            rate_bits: AtomicU64::new(1f64.to_bits()),
            epoch: AtomicU64::new(0),
            backlog_gate: AtomicU64::new(0),
            producers_waiting: AtomicBool::new(false),
            room: Notify::new(),
            started_total: Padded(AtomicU64::new(0)),
            sent_total: Padded(AtomicU64::new(0)),
            send_errors: Padded(AtomicU64::new(0)),
            received_total: Padded(AtomicU64::new(0)),
            newest_received_intended_us: Padded(AtomicU64::new(0)),
            first_error: Mutex::new(None),
            publish: Hists::new()?,
            delay: Hists::new()?,
            e2e: Hists::new()?,
        })
    }

    /// Open loop: each producer sends `per_producer` msgs/s on its schedule.
    pub(super) fn set_rate(&self, per_producer: f64) {
        self.backlog_gate.store(0, Ordering::Release);
        self.rate_bits
            .store(per_producer.max(0.001).to_bits(), Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.wake_producers();
    }

    /// Closed loop: producers send as fast as they can, but never while the backlog is over
    /// `backlog_gate` messages; a waiting producer goes on once it is down to half that. What
    /// the consumers then take is the most the broker sustains with a bounded backlog, measured
    /// directly instead of searched for step by step.
    pub(super) fn set_closed_loop(&self, backlog_gate: u64) {
        self.backlog_gate
            .store(backlog_gate.max(1), Ordering::Release);
        self.rate_bits
            .store(UNPACED_RATE.to_bits(), Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The closed loop's bound, `None` in open loop.
    pub(super) fn gate(&self) -> Option<u64> {
        Some(self.backlog_gate.load(Ordering::Acquire)).filter(|&gate| gate > 0)
    }

    /// Messages begun and neither received nor failed, over `subs` subscriptions: the backlog
    /// and the sends still unconfirmed. The closed loop bounds this, not the confirmed backlog:
    /// a client that queues sends locally (librdkafka takes 100,000) would otherwise take a
    /// whole queue past the bound, and the next step, the other side's, would start while it
    /// still drains into the broker they share.
    pub(super) fn in_flight(&self, subs: u64) -> u64 {
        let begun = self.started_total.load(Ordering::SeqCst);
        let failed = self.send_errors.load(Ordering::SeqCst);
        let owed = begun.saturating_sub(failed).saturating_mul(subs);
        owed.saturating_sub(self.received_total.load(Ordering::SeqCst))
    }

    /// Wake the producers waiting for the backlog to fall, if any (a consumer calls this each
    /// time it publishes its count; one flag load when nobody waits).
    pub(super) fn wake_producers(&self) {
        if self.producers_waiting.load(Ordering::SeqCst)
            && self.producers_waiting.swap(false, Ordering::SeqCst)
        {
            self.room.notify_waiters();
        }
    }

    /// Wait, in closed loop, until what is in flight is down to half of `gate` (or the loop has been
    /// left, or the run is stopping). The flag is raised before the backlog is read and the
    /// consumer reads it after publishing its count, so a wake-up is not lost between the two;
    /// the wait is still bounded, as a net under that reasoning.
    pub(super) async fn wait_for_room(&self, subs: u64, gate: u64, epoch: u64) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.producers_waiting.store(true, Ordering::SeqCst);
            if self.in_flight(subs) <= gate / 2
                || self.epoch.load(Ordering::Acquire) != epoch
                || self.stop_producers.load(Ordering::Acquire)
            {
                return;
            }
            let _ = tokio::time::timeout(ROOM_WAIT_LIMIT, notified).await;
        }
    }

    pub(super) fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Acquire))
    }

    pub(super) fn note_error(&self, e: &Error) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_loop_producer_waits_until_what_is_in_flight_is_down_to_half_the_gate() {
        let state = Arc::new(RunState::new().expect("run state"));
        state.set_closed_loop(100);
        assert_eq!(state.gate(), Some(100));
        // Begun: 1,000; 500 of them confirmed, 20 failed.
        state.started_total.store(1_000, Ordering::SeqCst);
        state.sent_total.store(500, Ordering::SeqCst);
        state.send_errors.store(20, Ordering::SeqCst);
        let epoch = state.epoch.load(Ordering::Acquire);
        let waiter = {
            let state = state.clone();
            tokio::spawn(async move { state.wait_for_room(1, 100, epoch).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "980 in flight over a gate of 100");
        // Under the gate but not under half of it: still waiting.
        state.received_total.store(900, Ordering::SeqCst);
        state.wake_producers();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "80 in flight: the wait ends at 50");
        state.received_total.store(935, Ordering::SeqCst);
        state.wake_producers();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("45 in flight ends the wait")
            .expect("the waiter");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn going_back_to_open_loop_ends_a_wait_and_the_gate() {
        let state = Arc::new(RunState::new().expect("run state"));
        state.set_closed_loop(10);
        state.started_total.store(1_000, Ordering::SeqCst);
        let epoch = state.epoch.load(Ordering::Acquire);
        let waiter = {
            let state = state.clone();
            tokio::spawn(async move { state.wait_for_room(1, 10, epoch).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        state.set_rate(100.0);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("a new rate ends the wait")
            .expect("the waiter");
        assert_eq!(state.gate(), None);
        assert_eq!(state.rate(), 100.0);
    }

    /// A fixed spread of values: exact ones below 2,048, every doubling up to the top, values
    /// out of range at both ends (recorded clamped), and a pseudo-random tail.
    fn known_input() -> Vec<u64> {
        let mut values: Vec<u64> = vec![0, 1, 2, 3, 50, 999, 2_047, 2_048, 2_049, 4_097];
        values.extend((0..32).map(|s| (1u64 << s) + 7));
        values.extend([HIST_MAX_US - 1, HIST_MAX_US, HIST_MAX_US + 1, u64::MAX]);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly microsecond latencies, some up to seconds.
            values.push(x % if x & 7 == 0 { 5_000_000 } else { 3_000 });
        }
        values
    }

    #[test]
    fn split_recording_keeps_every_count_and_percentile() {
        let values = known_input();
        let mut direct = histogram().expect("histogram");
        for &v in &values {
            direct.saturating_record(v.clamp(1, HIST_MAX_US));
        }
        // Three tasks' parts, read in two periods as a run does, then merged.
        let hists = Hists::new().expect("histogram");
        let parts = [hists.part(), hists.part(), hists.part()];
        let (first, second) = values.split_at(values.len() / 3);
        for (i, &v) in first.iter().enumerate() {
            record(&parts[i % 3], v);
        }
        let mut merged = hists.take();
        for (i, &v) in second.iter().enumerate() {
            record(&parts[i % 3], v);
        }
        let later = hists.take();
        merged.add(&later).expect("same bounds");
        assert_eq!(hists.take().len(), 0, "a take leaves nothing behind");

        assert_eq!(merged.len(), values.len() as u64, "every record counted");
        assert_eq!(merged.len(), direct.len());
        assert_eq!((merged.min(), merged.max()), (direct.min(), direct.max()));
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                direct.value_at_quantile(q),
                "quantile {q}"
            );
        }
        let buckets = |h: &Histogram<u64>| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect::<Vec<_>>()
        };
        assert_eq!(buckets(&merged), buckets(&direct), "bucket by bucket");
    }
}
