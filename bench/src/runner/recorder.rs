//! A latency histogram that one task records into and the run's loop reads while it runs,
//! without a lock: its buckets are plain counters that only the owning task writes (a load and
//! a store, no read-modify-write), and a reader keeps what it saw last time and merges only the
//! difference into an [`hdrhistogram::Histogram`].
//!
//! The buckets are hdrhistogram's own for a lowest value of 1 and 3 significant figures (2,048
//! sub-buckets, the top half of each doubling bucket after the first), so a merged histogram
//! holds exactly the counts that recording the same values into the hdrhistogram directly
//! would: no record is sampled, dropped or moved to another bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;

/// Sub-buckets of the first bucket (values 0..2048 recorded exactly).
const SUB_BUCKETS: u64 = 2048;
/// Sub-buckets of each later bucket (only the top half of a doubling is new).
const HALF: u64 = SUB_BUCKETS / 2;

/// The bucket a value falls in; the same for every value hdrhistogram treats as equivalent.
#[inline]
fn index(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    // Resolution 2^shift for values in [1024 << shift, 2048 << shift).
    let shift = u64::from(63 - value.leading_zeros()) - 10;
    let sub = value >> shift;
    (SUB_BUCKETS + (shift - 1) * HALF + (sub - HALF)) as usize
}

/// The lowest value of bucket `index` (a value hdrhistogram puts in the same bucket).
fn value_at(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let shift = (index - SUB_BUCKETS) / HALF + 1;
    let sub = (index - SUB_BUCKETS) % HALF + HALF;
    sub << shift
}

/// The buckets, shared between the recording task and the reader.
struct Buckets(Box<[AtomicU64]>);

/// The recording end: one per task, not `Clone`, so each bucket has a single writer.
pub(super) struct Recorder {
    buckets: Arc<Buckets>,
    /// Values above this are recorded as this (`saturating_record`, as before).
    highest: u64,
}

impl Recorder {
    /// Count one value, clamped to `1..=highest` as the run's histograms always were.
    #[inline]
    pub(super) fn record(&self, value: u64) {
        let value = value.clamp(1, self.highest);
        if let Some(bucket) = self.buckets.0.get(index(value)) {
            // The only writer: a plain load and store cannot lose a count.
            bucket.store(bucket.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }
}

/// The reading end: what it merged so far, to merge only what is new.
pub(super) struct Reader {
    buckets: Arc<Buckets>,
    seen: Vec<u64>,
}

impl Reader {
    /// Add to `into` every value recorded since the last call.
    pub(super) fn merge_new(&mut self, into: &mut Histogram<u64>) {
        for (i, (bucket, seen)) in self.buckets.0.iter().zip(self.seen.iter_mut()).enumerate() {
            let now = bucket.load(Ordering::Relaxed);
            if now != *seen {
                // hdrhistogram's own bounds are those of the recorder: cannot fail.
                let _ = into.record_n(value_at(i), now - *seen);
                *seen = now;
            }
        }
    }
}

/// A recorder of values up to `highest` and its reader.
pub(super) fn pair(highest: u64) -> (Recorder, Reader) {
    let len = index(highest.max(1)) + 1;
    let buckets = Arc::new(Buckets((0..len).map(|_| AtomicU64::new(0)).collect()));
    (
        Recorder {
            buckets: buckets.clone(),
            highest: highest.max(1),
        },
        Reader {
            buckets,
            seen: vec![0; len],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIGHEST: u64 = 3_600_000_000;

    fn hdr() -> Histogram<u64> {
        Histogram::new_with_bounds(1, HIGHEST, 3).expect("histogram bounds")
    }

    #[test]
    fn every_bucket_maps_back_to_itself_and_to_hdrhistograms_bucket() {
        let h = hdr();
        let top = index(HIGHEST);
        for i in 0..=top {
            let v = value_at(i);
            assert_eq!(index(v), i, "bucket {i} (value {v})");
            if v >= 1 {
                // hdrhistogram agrees on the bucket's lower edge.
                assert_eq!(h.lowest_equivalent(v), v, "bucket {i} (value {v})");
            }
        }
        for v in [1, 2047, 2048, 2049, 4095, 4096, 1_000_003, HIGHEST] {
            assert_eq!(value_at(index(v)), h.lowest_equivalent(v), "value {v}");
        }
    }
}
