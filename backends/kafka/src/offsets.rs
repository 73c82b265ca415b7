//! The settled-prefix book: which offsets of each partition may be committed.
//!
//! Kafka commits one offset per partition, meaning "everything before this is done". Deliveries
//! are settled in any order, so the book remembers every offset handed out and lets the commit
//! position advance only over the *contiguous settled prefix*: an ack of offset 7 while 5 is
//! still unsettled stores nothing, and the ack of 5 then stores 8. Whatever is not stored is
//! redelivered after a crash, a close or a rebalance — at least once, never skipped.
//!
//! Each assignment of a partition gets a fresh *epoch*. A delivery remembers the epoch it came
//! from, so that settling it after its partition was revoked (and perhaps assigned again, with
//! fetching restarted from the committed offset) cannot move the new assignment's position.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// A topic and partition.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// The book's maps are looked up two or three times per record by topic name: std's SipHash
/// of the name cost more than the rest of the bookkeeping. The keys are the consumer's own
/// assignment, not input an attacker picks, so a fast multiplicative hash (FxHash's) is safe.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.add(u64::from(n as u32));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map by topic and partition, hashed with [`FastHasher`].
type ByPartition<V> = HashMap<TopicPartition, V, BuildHasherDefault<FastHasher>>;

#[derive(Debug)]
struct Partition {
    epoch: u64,
    /// Offsets handed out and not yet committable, in ascending order, with whether each was
    /// settled. A partition's records arrive in offset order, so a delivery is pushed at the
    /// back and the settled prefix popped off the front: no tree node per record, as a
    /// `BTreeMap` cost.
    pending: Pending,
    /// The next offset to store, once the settled prefix moved and until the consumer hands
    /// it to librdkafka. Kept here rather than in a map of its own: an ack then costs no
    /// hash insert and no clone of the topic's name.
    to_store: Option<i64>,
}

/// Offsets in ascending order, each with whether it was settled.
#[derive(Debug, Default)]
struct Pending(VecDeque<(i64, bool)>);

impl Pending {
    /// Record `offset` as `settled`; false if it was there already (its flag is replaced).
    fn insert(&mut self, offset: i64, settled: bool) -> bool {
        match self.0.back() {
            Some((last, _)) if *last >= offset => {}
            _ => {
                self.0.push_back((offset, settled));
                return true;
            }
        }
        // Out of order (a seek back within one assignment): kept sorted all the same.
        match self.0.binary_search_by_key(&offset, |(o, _)| *o) {
            Ok(at) => {
                self.0[at].1 = settled;
                false
            }
            Err(at) => {
                self.0.insert(at, (offset, settled));
                true
            }
        }
    }

    fn get_mut(&mut self, offset: i64) -> Option<&mut bool> {
        // Acks mostly come in the order of delivery: the oldest pending offset first.
        if self.0.front().is_some_and(|(o, _)| *o == offset) {
            return self.0.front_mut().map(|(_, settled)| settled);
        }
        let at = self.0.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        Some(&mut self.0[at].1)
    }

    /// Drop the settled prefix; returns the offset after it, if it was not empty.
    fn pop_settled(&mut self) -> Option<i64> {
        let mut next = None;
        while let Some((offset, true)) = self.0.front() {
            next = Some(offset + 1);
            self.0.pop_front();
        }
        next
    }

    fn unsettled(&self) -> usize {
        self.0.iter().filter(|(_, settled)| !settled).count()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Default)]
struct Book {
    partitions: ByPartition<Partition>,
    next_epoch: u64,
    /// Whether some partition has an offset to store: spares `take_stores` its walk over the
    /// partitions when none moved.
    to_store: bool,
    /// Requeues (re-produced copies) whose delivery report has not arrived yet.
    requeues: usize,
}

impl Book {
    fn fresh(&mut self) -> Partition {
        self.next_epoch += 1;
        Partition {
            epoch: self.next_epoch,
            pending: Pending::default(),
            to_store: None,
        }
    }

    /// Drop `tp`'s record; returns how many of its deliveries were unsettled.
    fn forget(&mut self, tp: &TopicPartition) -> usize {
        self.partitions
            .remove(tp)
            .map_or(0, |old| old.pending.unsettled())
    }
}

/// The book shared by a consumer, its rebalance callbacks and its deliveries' settle handles.
#[derive(Debug, Default)]
pub(crate) struct OffsetBook {
    book: Mutex<Book>,
    /// Deliveries handed out and not settled, over the current assignment. Changed only under
    /// the book's lock, read without it: the consumer checks its prefetch bound once per
    /// record, and a value one settle behind only delays it until that settle's wake-up.
    unsettled: AtomicUsize,
    /// Woken on every settle: the consumer stores offsets and re-checks its prefetch bound.
    pub settled: Notify,
}

impl OffsetBook {
    fn lock(&self) -> MutexGuard<'_, Book> {
        // Every update below is a few map operations that leave the book consistent.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partitions were assigned: start each afresh (fetching restarts at the committed offset).
    pub fn assign(&self, tps: &[TopicPartition]) {
        let mut book = self.lock();
        for tp in tps {
            let gone = book.forget(tp);
            self.unsettled.fetch_sub(gone, Ordering::Relaxed);
            let fresh = book.fresh();
            book.partitions.insert(tp.clone(), fresh);
        }
    }

    /// Partitions were revoked: their unsettled deliveries no longer count.
    pub fn revoke(&self, tps: &[TopicPartition]) {
        let mut book = self.lock();
        for tp in tps {
            let gone = book.forget(tp);
            self.unsettled.fetch_sub(gone, Ordering::Relaxed);
        }
    }

    /// The consumer closed: no assignment remains, later settles are moot.
    pub fn clear(&self) {
        let mut book = self.lock();
        book.partitions.clear();
        book.to_store = false;
        self.unsettled.store(0, Ordering::Relaxed);
    }

    /// A message at `offset` was handed out; returns the epoch its settle must quote.
    pub fn delivered(&self, tp: &TopicPartition, offset: i64) -> u64 {
        let mut book = self.lock();
        let book = &mut *book;
        // One lookup per record in the common case (the partition is known).
        let partition = match book.partitions.get_mut(tp) {
            Some(p) => p,
            None => {
                book.next_epoch += 1;
                book.partitions.entry(tp.clone()).or_insert(Partition {
                    epoch: book.next_epoch,
                    pending: Pending::default(),
                    to_store: None,
                })
            }
        };
        if partition.pending.insert(offset, false) {
            self.unsettled.fetch_add(1, Ordering::Relaxed);
        }
        partition.epoch
    }

    /// A record at `offset` was passed over without being delivered (client-side routing: no
    /// binding matched it): settled at once, so the commit position moves over it once every
    /// delivery before it is settled, as over an acked one. It never counts as unsettled.
    pub fn passed(&self, tp: &TopicPartition, offset: i64) {
        let mut book = self.lock();
        if !book.partitions.contains_key(tp) {
            let fresh = book.fresh();
            book.partitions.insert(tp.clone(), fresh);
        }
        let book = &mut *book;
        let Some(p) = book.partitions.get_mut(tp) else {
            return;
        };
        if p.pending.is_empty() {
            // Everything handed out before is settled: the position moves straight past it.
            p.to_store = Some(offset + 1);
            book.to_store = true;
        } else {
            p.pending.insert(offset, true);
        }
    }

    /// A delivery was settled. Returns false if its assignment is gone (the settle is moot:
    /// whoever owns the partition now will deliver the message again).
    pub fn settle(&self, tp: &TopicPartition, offset: i64, epoch: u64) -> bool {
        let counted = {
            let mut book = self.lock();
            let book = &mut *book;
            let mut counted = false;
            if let Some(p) = book.partitions.get_mut(tp).filter(|p| p.epoch == epoch) {
                if let Some(settled) = p.pending.get_mut(offset) {
                    if !*settled {
                        *settled = true;
                        counted = true;
                    }
                }
                if let Some(next) = p.pending.pop_settled() {
                    p.to_store = Some(next);
                    book.to_store = true;
                }
            }
            if counted {
                self.unsettled.fetch_sub(1, Ordering::Relaxed);
            }
            counted
        };
        self.settled.notify_one();
        counted
    }

    /// Whether a delivery of this epoch still belongs to the current assignment.
    pub fn is_current(&self, tp: &TopicPartition, epoch: u64) -> bool {
        self.lock()
            .partitions
            .get(tp)
            .is_some_and(|p| p.epoch == epoch)
    }

    /// Next offsets that became committable since the last call.
    pub fn take_stores(&self) -> Vec<(TopicPartition, i64)> {
        let mut book = self.lock();
        if !std::mem::take(&mut book.to_store) {
            return Vec::new();
        }
        book.partitions
            .iter_mut()
            .filter_map(|(tp, p)| Some((tp.clone(), p.to_store.take()?)))
            .collect()
    }

    /// Deliveries handed out and not settled, over the current assignment.
    pub fn unsettled(&self) -> usize {
        self.unsettled.load(Ordering::Relaxed)
    }

    /// A requeue copy was handed to the producer.
    pub fn requeue_started(&self) {
        self.lock().requeues += 1;
    }

    /// A requeue copy's delivery report arrived (either way).
    pub fn requeue_finished(&self) {
        let mut book = self.lock();
        book.requeues = book.requeues.saturating_sub(1);
        drop(book);
        self.settled.notify_one();
    }

    /// Requeue copies still waiting for their delivery report.
    pub fn requeues(&self) -> usize {
        self.lock().requeues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        (Arc::from("t"), 0)
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        let e: Vec<u64> = (10..15).map(|o| book.delivered(&tp(), o)).collect();
        assert!(book.settle(&tp(), 12, e[2]));
        assert!(book.settle(&tp(), 14, e[4]));
        assert!(
            book.take_stores().is_empty(),
            "10 is unsettled: nothing may be stored"
        );
        assert!(book.settle(&tp(), 10, e[0]));
        assert_eq!(book.take_stores(), vec![(tp(), 11)]);
        assert!(book.settle(&tp(), 11, e[1]));
        assert_eq!(book.take_stores(), vec![(tp(), 13)]);
        assert!(book.settle(&tp(), 13, e[3]));
        assert_eq!(book.take_stores(), vec![(tp(), 15)]);
        assert_eq!(book.unsettled(), 0);
    }

    #[test]
    fn settles_from_a_revoked_assignment_are_ignored() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        let old = book.delivered(&tp(), 0);
        book.revoke(&[tp()]);
        book.assign(&[tp()]);
        assert!(!book.is_current(&tp(), old));
        assert!(!book.settle(&tp(), 0, old));
        assert!(book.take_stores().is_empty());
        let new = book.delivered(&tp(), 0);
        assert!(book.settle(&tp(), 0, new));
        assert_eq!(book.take_stores(), vec![(tp(), 1)]);
    }

    #[test]
    fn passed_records_commit_only_behind_every_earlier_delivery() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        book.passed(&tp(), 0);
        assert_eq!(book.take_stores(), vec![(tp(), 1)], "nothing before it");
        let e = book.delivered(&tp(), 1);
        book.passed(&tp(), 2);
        book.passed(&tp(), 3);
        assert!(
            book.take_stores().is_empty(),
            "1 is unsettled: passing 2 and 3 may not commit past it"
        );
        assert_eq!(book.unsettled(), 1, "passed records are never unsettled");
        assert!(book.settle(&tp(), 1, e));
        assert_eq!(book.take_stores(), vec![(tp(), 4)]);
        book.passed(&tp(), 4);
        assert_eq!(book.take_stores(), vec![(tp(), 5)]);
        assert_eq!(book.unsettled(), 0);
    }

    #[test]
    fn offsets_handed_out_of_order_still_commit_in_order() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        // A seek back within one assignment hands out lower offsets after higher ones.
        let e7 = book.delivered(&tp(), 7);
        let e5 = book.delivered(&tp(), 5);
        let e6 = book.delivered(&tp(), 6);
        assert_eq!(book.delivered(&tp(), 6), e6, "the same offset twice");
        assert_eq!(book.unsettled(), 3, "counted once");
        assert!(book.settle(&tp(), 7, e7));
        assert!(book.settle(&tp(), 6, e6));
        assert!(book.take_stores().is_empty(), "5 is unsettled");
        assert!(book.settle(&tp(), 5, e5));
        assert_eq!(book.take_stores(), vec![(tp(), 8)]);
        assert_eq!(book.unsettled(), 0);
    }

    #[test]
    fn a_revoke_forgets_the_partition_s_unsettled_count_and_pending_store() {
        let book = OffsetBook::default();
        let other: TopicPartition = (Arc::from("t"), 1);
        book.assign(&[tp(), other.clone()]);
        let e0 = book.delivered(&tp(), 0);
        let _ = book.delivered(&tp(), 1);
        let e5 = book.delivered(&other, 5);
        assert!(book.settle(&tp(), 0, e0));
        assert_eq!(book.unsettled(), 2);
        book.revoke(&[tp()]);
        assert_eq!(
            book.unsettled(),
            1,
            "only the other partition's delivery is left"
        );
        assert!(
            book.take_stores().is_empty(),
            "a revoked partition's settled prefix is not stored after the revoke"
        );
        assert!(book.settle(&other, 5, e5));
        assert_eq!(book.take_stores(), vec![(other, 6)]);
        assert!(book.take_stores().is_empty(), "taken once");
    }

    #[test]
    fn double_settle_counts_once() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        let e = book.delivered(&tp(), 3);
        let _ = book.delivered(&tp(), 4);
        assert_eq!(book.unsettled(), 2);
        assert!(book.settle(&tp(), 3, e));
        assert!(!book.settle(&tp(), 3, e));
        assert_eq!(book.unsettled(), 1);
    }
}
