//! The soak's bookkeeping: which messages were confirmed and which received, one bit each per
//! producer's sequence number, sized up front. An id set would grow with every message (tens of
//! MiB over a ten-minute run) and show in the very memory curve the soak is judged by.

/// Confirmed and received bits per producer, plus the counts the report needs.
pub(super) struct Ledger {
    confirmed: Vec<Bits>,
    received: Vec<Bits>,
    confirmed_count: usize,
    received_count: usize,
    duplicates: usize,
    foreign: usize,
}

impl Ledger {
    /// Room for `expected` sequence numbers per producer without growing.
    pub(super) fn new(producers: usize, expected: usize) -> Self {
        Ledger {
            confirmed: (0..producers)
                .map(|_| Bits::with_capacity(expected))
                .collect(),
            received: (0..producers)
                .map(|_| Bits::with_capacity(expected))
                .collect(),
            confirmed_count: 0,
            received_count: 0,
            duplicates: 0,
            foreign: 0,
        }
    }

    /// Producer `producer`'s message `seq` was confirmed.
    pub(super) fn confirm(&mut self, producer: usize, seq: u64) {
        if let Some(bits) = self.confirmed.get_mut(producer) {
            if bits.set(seq) {
                self.confirmed_count += 1;
            }
        }
    }

    /// Message `seq` of `producer` arrived; true the first time. A (producer, seq) this run did
    /// not send (another run's message on a reused queue) is counted apart, not tallied.
    pub(super) fn receive(&mut self, producer: usize, seq: u64) -> bool {
        match self.received.get_mut(producer) {
            Some(bits) => {
                let first = bits.set(seq);
                match first {
                    true => self.received_count += 1,
                    false => self.duplicates += 1,
                }
                first
            }
            None => {
                self.foreign += 1;
                false
            }
        }
    }

    /// Confirmed messages not received.
    pub(super) fn missing(&self) -> usize {
        self.confirmed
            .iter()
            .zip(&self.received)
            .map(|(confirmed, received)| confirmed.count_not_in(received))
            .sum()
    }

    pub(super) fn confirmed(&self) -> usize {
        self.confirmed_count
    }

    pub(super) fn received(&self) -> usize {
        self.received_count
    }

    pub(super) fn duplicates(&self) -> usize {
        self.duplicates
    }

    pub(super) fn foreign(&self) -> usize {
        self.foreign
    }
}

/// A growable bit set.
struct Bits(Vec<u64>);

impl Bits {
    fn with_capacity(bits: usize) -> Self {
        Bits(Vec::with_capacity(bits.div_ceil(64)))
    }

    /// Set bit `i`; true if it was clear.
    fn set(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, i % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let was_clear = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        was_clear
    }

    /// Bits set here and clear in `other`.
    fn count_not_in(&self, other: &Bits) -> usize {
        self.0
            .iter()
            .enumerate()
            .map(|(i, word)| (word & !other.0.get(i).copied().unwrap_or(0)).count_ones() as usize)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_confirmed_received_duplicates_and_missing() {
        let mut ledger = Ledger::new(2, 10);
        for seq in 0..100 {
            ledger.confirm(0, seq);
        }
        ledger.confirm(1, 7);
        ledger.confirm(1, 7);
        for seq in 0..98 {
            assert!(ledger.receive(0, seq));
        }
        assert!(!ledger.receive(0, 5));
        assert!(ledger.receive(1, 7));
        assert!(ledger.receive(1, 500), "received though never confirmed");
        assert!(!ledger.receive(9, 1));
        assert_eq!(ledger.confirmed(), 101);
        assert_eq!(ledger.received(), 100);
        assert_eq!(ledger.duplicates(), 1);
        assert_eq!(ledger.foreign(), 1);
        assert_eq!(ledger.missing(), 2);
    }
}
