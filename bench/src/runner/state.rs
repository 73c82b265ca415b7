//! The live state of one run: the flags, rate and counters its tasks share, and latency
//! histograms split per task so that recording never contends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use mailroom_core::{Error, Result};

use super::HIST_MAX_US;

pub(super) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3)
        .map_err(|e| Error::config(format!("histogram: {e}")))
}

pub(super) type Part = Arc<Mutex<Histogram<u64>>>;

/// A histogram split into one part per task, so recording never contends; `take` merges.
pub(super) struct Hists {
    template: Histogram<u64>,
    parts: Mutex<Vec<Part>>,
}

impl Hists {
    fn new() -> Result<Hists> {
        Ok(Hists {
            template: histogram()?,
            parts: Mutex::new(Vec::new()),
        })
    }

    fn empty(&self) -> Histogram<u64> {
        self.template.clone()
    }

    pub(super) fn part(&self) -> Part {
        let part = Arc::new(Mutex::new(self.empty()));
        if let Ok(mut parts) = self.parts.lock() {
            parts.push(part.clone());
        }
        part
    }

    pub(super) fn take(&self) -> Histogram<u64> {
        let mut out = self.empty();
        if let Ok(parts) = self.parts.lock() {
            for part in parts.iter() {
                if let Ok(mut h) = part.lock() {
                    let _ = out.add(&*h);
                    h.reset();
                }
            }
        }
        out
    }
}

pub(super) fn record(part: &Part, us: u64) {
    if let Ok(mut h) = part.lock() {
        h.saturating_record(us.clamp(1, HIST_MAX_US));
    }
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
    /// Confirmed sends, ever (backlog) and since the last period (rates).
    pub(super) sent_total: Padded<AtomicU64>,
    pub(super) sent: Padded<AtomicU64>,
    pub(super) send_errors: Padded<AtomicU64>,
    pub(super) received_total: Padded<AtomicU64>,
    pub(super) received: Padded<AtomicU64>,
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
            sent_total: Padded(AtomicU64::new(0)),
            sent: Padded(AtomicU64::new(0)),
            send_errors: Padded(AtomicU64::new(0)),
            received_total: Padded(AtomicU64::new(0)),
            received: Padded(AtomicU64::new(0)),
            newest_received_intended_us: Padded(AtomicU64::new(0)),
            first_error: Mutex::new(None),
            publish: Hists::new()?,
            delay: Hists::new()?,
            e2e: Hists::new()?,
        })
    }

    pub(super) fn set_rate(&self, per_producer: f64) {
        self.rate_bits
            .store(per_producer.max(0.001).to_bits(), Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
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
