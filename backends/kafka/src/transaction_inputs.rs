//! The inputs of a Kafka transaction: the first and last offset received on each input
//! partition while the transaction is open, the offsets its commit hands the transaction, where
//! an abort seeks back to, and the rebalance callback that dooms a transaction whose input
//! partitions were revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::consumer::partitions_in;
use crate::offsets::TopicPartition;

/// What the open transaction consumed, shared with the rebalance callbacks.
#[derive(Debug, Clone, Default)]
pub(crate) struct TxInputs(Arc<Mutex<Book>>);

#[derive(Debug, Default)]
struct Book {
    /// First and last offset received per input partition in the open transaction.
    partitions: HashMap<TopicPartition, (i64, i64)>,
    /// Inputs received in the open transaction.
    inputs: usize,
    /// Why the open transaction may no longer commit, once that is known.
    doomed: Option<&'static str>,
}

impl TxInputs {
    fn lock(&self) -> MutexGuard<'_, Book> {
        // Every update is a few map operations that leave the book consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rebalance callbacks of the input consumer, writing to this book.
    pub(crate) fn context(&self) -> TxContext {
        TxContext {
            inputs: self.clone(),
        }
    }

    /// Note an input received in the open transaction.
    pub(crate) fn received(&self, topic: Arc<str>, partition: i32, offset: i64) {
        let mut book = self.lock();
        book.inputs += 1;
        book.partitions
            .entry((topic, partition))
            .and_modify(|(_, last)| *last = offset.max(*last))
            .or_insert((offset, offset));
    }

    /// Inputs received in the open transaction.
    pub(crate) fn count(&self) -> usize {
        self.lock().inputs
    }

    /// Why the open transaction may no longer commit, if it may not.
    pub(crate) fn doomed(&self) -> Option<&'static str> {
        self.lock().doomed
    }

    /// The offsets a commit hands the transaction: the one after the last input of each
    /// partition.
    pub(crate) fn commit_offsets(&self) -> KafkaResult<TopicPartitionList> {
        let book = self.lock();
        let mut tpl = TopicPartitionList::with_capacity(book.partitions.len());
        for ((topic, partition), (_, last)) in &book.partitions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(last + 1))?;
        }
        Ok(tpl)
    }

    /// The transaction committed: its inputs are consumed.
    pub(crate) fn committed(&self) {
        let mut book = self.lock();
        book.inputs = 0;
        book.partitions.clear();
        book.doomed = None;
    }

    /// The transaction was aborted: forget its inputs and return where each input partition
    /// seeks back to (its first input in the transaction), so they come again.
    pub(crate) fn rewind(&self) -> KafkaResult<TopicPartitionList> {
        let starts: Vec<(TopicPartition, i64)> = {
            let mut book = self.lock();
            book.inputs = 0;
            book.doomed = None;
            book.partitions
                .drain()
                .map(|(tp, (first, _))| (tp, first))
                .collect()
        };
        let mut tpl = TopicPartitionList::with_capacity(starts.len());
        for ((topic, partition), first) in &starts {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*first))?;
        }
        Ok(tpl)
    }
}

/// Rebalance callbacks (run inside `receive`, on the caller's task).
pub(crate) struct TxContext {
    inputs: TxInputs,
}

impl ClientContext for TxContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::context::forward_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::context::forward_error(&error, reason);
    }
}

impl ConsumerContext for TxContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let mut book = self.inputs.lock();
        let mut lost = false;
        for tp in partitions_in(tpl) {
            lost |= book.partitions.remove(&tp).is_some();
        }
        // Committing these offsets now could only fail (the group generation moved on) or,
        // were the partitions handed straight back, commit inputs that fetching is about to
        // deliver again from the last commit. The transaction must abort.
        if lost && book.doomed.is_none() {
            book.doomed = Some(
                "input partitions were revoked while the transaction was open; their new owner \
                 reads them from the last commit",
            );
        }
    }
}
