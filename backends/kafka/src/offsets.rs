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
    /// Which partition this slot holds: checked by `delivered` and `passed` against the slot
    /// they try first, before the map lookup.
    tp: TopicPartition,
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

/// Where a delivery's partition sits in the book, and the assignment it came from: what its
/// settle quotes. The slot spares the settle a lookup by topic name (hashing the name cost
/// more than the rest of an ack); the epoch, unique over the book's life, makes a settle
/// from an assignment that is gone moot even when its slot now holds another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    slot: usize,
    epoch: u64,
}

#[derive(Debug, Default)]
struct Book {
    /// The assigned partitions, each in a slot that keeps its index until the partition is
    /// revoked (a free slot is `None`, reused by the next assignment).
    slots: Vec<Option<Partition>>,
    /// Each assigned partition's slot.
    index: ByPartition<usize>,
    /// The slot `delivered` or `passed` used last: a partition's records come in runs (a
    /// fetch at a time), so the next record is most likely of the same one.
    last: usize,
    next_epoch: u64,
    /// Whether some partition has an offset to store: spares `take_stores` its walk over the
    /// partitions when none moved.
    to_store: bool,
    /// Requeues (re-produced copies) whose delivery report has not arrived yet.
    requeues: usize,
}

impl Book {
    /// Start `tp` afresh (a new epoch, nothing pending) in its slot, or in a free one; returns
    /// how many deliveries of its previous assignment were unsettled.
    fn fresh(&mut self, tp: &TopicPartition) -> (usize, usize) {
        self.next_epoch += 1;
        let partition = Partition {
            tp: tp.clone(),
            epoch: self.next_epoch,
            pending: Pending::default(),
            to_store: None,
        };
        if let Some(&slot) = self.index.get(tp) {
            let old = self.slots[slot].replace(partition);
            return (slot, old.map_or(0, |old| old.pending.unsettled()));
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(partition);
                free
            }
            None => {
                self.slots.push(Some(partition));
                self.slots.len() - 1
            }
        };
        self.index.insert(tp.clone(), slot);
        (slot, 0)
    }

    /// The slot of `topic`'s `partition`, started afresh if it is not assigned (a record of a
    /// partition the book did not hear of: counted all the same). Borrowed parts rather than a
    /// [`TopicPartition`]: the common case, the slot used last, clones no name.
    fn find_or_start(&mut self, topic: &Arc<str>, partition: i32) -> usize {
        let last = self.slots.get(self.last).and_then(Option::as_ref);
        if last.is_some_and(|p| p.tp.1 == partition && Arc::ptr_eq(&p.tp.0, topic)) {
            return self.last;
        }
        let tp = (topic.clone(), partition);
        let slot = match self.index.get(&tp) {
            Some(&slot) => slot,
            None => self.fresh(&tp).0,
        };
        // The slot takes the caller's `Arc` of the name (the consumer's, where the assignment
        // came with librdkafka's), so that the check above matches by pointer from now on.
        if let Some(p) = self.slots[slot].as_mut() {
            p.tp.0 = tp.0;
        }
        self.last = slot;
        slot
    }

    fn partition(&mut self, mark: Mark) -> Option<&mut Partition> {
        self.slots
            .get_mut(mark.slot)
            .and_then(Option::as_mut)
            .filter(|p| p.epoch == mark.epoch)
    }

    /// Drop `tp`'s record; returns how many of its deliveries were unsettled.
    fn forget(&mut self, tp: &TopicPartition) -> usize {
        let Some(slot) = self.index.remove(tp) else {
            return 0;
        };
        self.slots[slot]
            .take()
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
            let (_, gone) = book.fresh(tp);
            self.unsettled.fetch_sub(gone, Ordering::Relaxed);
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
        book.slots.clear();
        book.index.clear();
        book.to_store = false;
        self.unsettled.store(0, Ordering::Relaxed);
    }

    /// A message at `offset` was handed out; returns the mark its settle must quote.
    pub fn delivered(&self, topic: &Arc<str>, partition: i32, offset: i64) -> Mark {
        let mut book = self.lock();
        let slot = book.find_or_start(topic, partition);
        let Some(partition) = book.slots[slot].as_mut() else {
            // `find_or_start` returns an occupied slot.
            return Mark { slot, epoch: 0 };
        };
        if partition.pending.insert(offset, false) {
            self.unsettled.fetch_add(1, Ordering::Relaxed);
        }
        Mark {
            slot,
            epoch: partition.epoch,
        }
    }

    /// A record at `offset` was passed over without being delivered (client-side routing: no
    /// binding matched it): settled at once, so the commit position moves over it once every
    /// delivery before it is settled, as over an acked one. It never counts as unsettled.
    pub fn passed(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        let mut book = self.lock();
        let book = &mut *book;
        let slot = book.find_or_start(topic, partition);
        let Some(p) = book.slots[slot].as_mut() else {
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
    pub fn settle(&self, mark: Mark, offset: i64) -> bool {
        let counted = {
            let mut book = self.lock();
            let book = &mut *book;
            let mut counted = false;
            let mut moved = false;
            if let Some(p) = book.partition(mark) {
                if let Some(settled) = p.pending.get_mut(offset) {
                    if !*settled {
                        *settled = true;
                        counted = true;
                    }
                }
                if let Some(next) = p.pending.pop_settled() {
                    p.to_store = Some(next);
                    moved = true;
                }
            }
            book.to_store |= moved;
            if counted {
                self.unsettled.fetch_sub(1, Ordering::Relaxed);
            }
            counted
        };
        self.settled.notify_one();
        counted
    }

    /// Whether a delivery with this mark still belongs to the current assignment.
    pub fn is_current(&self, mark: Mark) -> bool {
        self.lock().partition(mark).is_some()
    }

    /// Next offsets that became committable since the last call.
    pub fn take_stores(&self) -> Vec<(TopicPartition, i64)> {
        let mut book = self.lock();
        if !std::mem::take(&mut book.to_store) {
            return Vec::new();
        }
        book.slots
            .iter_mut()
            .flatten()
            .filter_map(|p| Some((p.tp.clone(), p.to_store.take()?)))
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
        let e: Vec<Mark> = (10..15)
            .map(|o| book.delivered(&tp().0, tp().1, o))
            .collect();
        assert!(book.settle(e[2], 12));
        assert!(book.settle(e[4], 14));
        assert!(
            book.take_stores().is_empty(),
            "10 is unsettled: nothing may be stored"
        );
        assert!(book.settle(e[0], 10));
        assert_eq!(book.take_stores(), vec![(tp(), 11)]);
        assert!(book.settle(e[1], 11));
        assert_eq!(book.take_stores(), vec![(tp(), 13)]);
        assert!(book.settle(e[3], 13));
        assert_eq!(book.take_stores(), vec![(tp(), 15)]);
        assert_eq!(book.unsettled(), 0);
    }

    #[test]
    fn settles_from_a_revoked_assignment_are_ignored() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        let old = book.delivered(&tp().0, tp().1, 0);
        book.revoke(&[tp()]);
        book.assign(&[tp()]);
        assert!(!book.is_current(old));
        assert!(!book.settle(old, 0));
        assert!(book.take_stores().is_empty());
        let new = book.delivered(&tp().0, tp().1, 0);
        assert!(book.settle(new, 0));
        assert_eq!(book.take_stores(), vec![(tp(), 1)]);
    }

    #[test]
    fn passed_records_commit_only_behind_every_earlier_delivery() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        book.passed(&tp().0, tp().1, 0);
        assert_eq!(book.take_stores(), vec![(tp(), 1)], "nothing before it");
        let e = book.delivered(&tp().0, tp().1, 1);
        book.passed(&tp().0, tp().1, 2);
        book.passed(&tp().0, tp().1, 3);
        assert!(
            book.take_stores().is_empty(),
            "1 is unsettled: passing 2 and 3 may not commit past it"
        );
        assert_eq!(book.unsettled(), 1, "passed records are never unsettled");
        assert!(book.settle(e, 1));
        assert_eq!(book.take_stores(), vec![(tp(), 4)]);
        book.passed(&tp().0, tp().1, 4);
        assert_eq!(book.take_stores(), vec![(tp(), 5)]);
        assert_eq!(book.unsettled(), 0);
    }

    #[test]
    fn offsets_handed_out_of_order_still_commit_in_order() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        // A seek back within one assignment hands out lower offsets after higher ones.
        let e7 = book.delivered(&tp().0, tp().1, 7);
        let e5 = book.delivered(&tp().0, tp().1, 5);
        let e6 = book.delivered(&tp().0, tp().1, 6);
        assert_eq!(
            book.delivered(&tp().0, tp().1, 6),
            e6,
            "the same offset twice"
        );
        assert_eq!(book.unsettled(), 3, "counted once");
        assert!(book.settle(e7, 7));
        assert!(book.settle(e6, 6));
        assert!(book.take_stores().is_empty(), "5 is unsettled");
        assert!(book.settle(e5, 5));
        assert_eq!(book.take_stores(), vec![(tp(), 8)]);
        assert_eq!(book.unsettled(), 0);
    }

    #[test]
    fn a_revoke_forgets_the_partition_s_unsettled_count_and_pending_store() {
        let book = OffsetBook::default();
        let other: TopicPartition = (Arc::from("t"), 1);
        book.assign(&[tp(), other.clone()]);
        let e0 = book.delivered(&tp().0, tp().1, 0);
        let _ = book.delivered(&tp().0, tp().1, 1);
        let e5 = book.delivered(&other.0, other.1, 5);
        assert!(book.settle(e0, 0));
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
        assert!(book.settle(e5, 5));
        assert_eq!(book.take_stores(), vec![(other, 6)]);
        assert!(book.take_stores().is_empty(), "taken once");
    }

    #[test]
    fn double_settle_counts_once() {
        let book = OffsetBook::default();
        book.assign(&[tp()]);
        let e = book.delivered(&tp().0, tp().1, 3);
        let _ = book.delivered(&tp().0, tp().1, 4);
        assert_eq!(book.unsettled(), 2);
        assert!(book.settle(e, 3));
        assert!(!book.settle(e, 3));
        assert_eq!(book.unsettled(), 1);
    }

    #[test]
    fn a_slot_reused_by_another_partition_ignores_the_old_assignment_s_settles() {
        let book = OffsetBook::default();
        let a: TopicPartition = (Arc::from("a"), 0);
        let b: TopicPartition = (Arc::from("b"), 3);
        book.assign(std::slice::from_ref(&a));
        let old = book.delivered(&a.0, a.1, 4);
        book.revoke(std::slice::from_ref(&a));
        // b takes the slot a left; a's late ack must not settle b's offset 4.
        book.assign(std::slice::from_ref(&b));
        let on_b = book.delivered(&b.0, b.1, 4);
        assert!(!book.settle(old, 4));
        assert!(book.take_stores().is_empty());
        assert_eq!(book.unsettled(), 1);
        assert!(book.settle(on_b, 4));
        assert_eq!(book.take_stores(), vec![(b, 5)]);
    }

    #[test]
    fn interleaved_partitions_keep_their_own_prefixes() {
        let book = OffsetBook::default();
        let a: TopicPartition = (Arc::from("t"), 0);
        // Another `Arc` of the same name: the consumer's and librdkafka's are not shared.
        let a_again: TopicPartition = (Arc::from("t"), 0);
        let b: TopicPartition = (Arc::from("t"), 1);
        book.assign(&[a.clone(), b.clone()]);
        let a0 = book.delivered(&a.0, a.1, 0);
        let b0 = book.delivered(&b.0, b.1, 0);
        let a1 = book.delivered(&a_again.0, a_again.1, 1);
        let b1 = book.delivered(&b.0, b.1, 1);
        assert_eq!(a0, a1, "one assignment, one mark");
        assert_ne!(a0, b0);
        assert!(book.settle(a1, 1));
        assert!(book.settle(b0, 0));
        assert_eq!(book.take_stores(), vec![(b.clone(), 1)]);
        assert!(book.settle(a0, 0));
        assert!(book.settle(b1, 1));
        let mut stores = book.take_stores();
        stores.sort();
        assert_eq!(stores, vec![(a, 2), (b, 2)]);
        assert_eq!(book.unsettled(), 0);
    }
}
