//! Duplicate-aware counting of received messages.

use std::collections::HashMap;
use std::fmt;

use mailroom_core::MessageId;

/// Counts deliveries by message id, so duplicates are reported rather than hidden.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    seen: HashMap<MessageId, u32>,
    deliveries: usize,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Self {
        Tally::default()
    }

    /// Record a delivery; returns true the first time an id is seen.
    pub fn record(&mut self, id: &MessageId) -> bool {
        self.deliveries += 1;
        let count = self.seen.entry(id.clone()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Distinct messages seen.
    pub fn unique(&self) -> usize {
        self.seen.len()
    }

    /// Deliveries of an id already seen.
    pub fn duplicates(&self) -> usize {
        self.deliveries - self.seen.len()
    }

    /// Every delivery counted.
    pub fn deliveries(&self) -> usize {
        self.deliveries
    }

    /// Whether an id was seen.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.seen.contains_key(id)
    }

    /// Of the `expected` ids, those never seen.
    pub fn missing<'a>(&self, expected: impl IntoIterator<Item = &'a MessageId>) -> Vec<MessageId> {
        expected
            .into_iter()
            .filter(|id| !self.seen.contains_key(*id))
            .cloned()
            .collect()
    }

    /// Fold another tally into this one.
    pub fn merge(&mut self, other: &Tally) {
        for (id, n) in &other.seen {
            *self.seen.entry(id.clone()).or_insert(0) += n;
        }
        self.deliveries += other.deliveries;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unique, {} duplicates",
            self.unique(),
            self.duplicates()
        )
    }
}
