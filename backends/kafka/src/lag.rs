//! Consumer lag: how far a queue's consumer group is behind the ends of its topics.
//!
//! A Kafka queue `Q` is consumed by group `Q` from topic `Q` and the fanout exchanges bound to
//! it, so what waits in `Q` is the sum over those partitions of the high watermark minus the
//! group's committed offset. A partition the group has not committed on yet is read from its
//! start (the consumers' `auto.offset.reset=earliest`), so all it retains counts.

use std::sync::Arc;
use std::time::Instant;

use mailroom_core::operation::QUEUE_DEPTH;
use mailroom_core::{Error, ErrorKind, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::connection::{blocking, topic_partitions, Connection};
use crate::{error, BACKEND};

/// The consumer lag of group `queue` over topic `queue` and the exchanges bound to it, within
/// the connection's operation timeout (every broker round trip shares that one deadline).
pub(crate) async fn consumer_lag(connection: Arc<Connection>, queue: &str) -> Result<u64> {
    let mut topics = vec![queue.to_owned()];
    topics.extend(connection.declared.bound_exchanges(queue));
    let group = queue.to_owned();
    blocking(move || {
        let deadline = Instant::now() + connection.config.operation_timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let map = |e| error::map(e, QUEUE_DEPTH);
        let mut wanted = TopicPartitionList::new();
        for topic in &topics {
            let partitions = topic_partitions(connection.admin.inner(), topic, left())?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("queue '{group}' has no topic '{topic}' on the cluster"),
                    )
                    .with_backend(BACKEND)
                    .with_operation(QUEUE_DEPTH)
                })?;
            for p in partitions {
                wanted.add_partition(topic, p);
            }
        }
        // A consumer that never subscribes does not join the group: it only asks the group
        // coordinator for the committed offsets.
        let mut cc = connection.config.client_config(&[]);
        cc.set("group.id", &group)
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = cc.create().map_err(map)?;
        let committed = consumer.committed_offsets(wanted, left()).map_err(map)?;
        let mut lag = 0u64;
        for e in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), left())
                .map_err(map)?;
            let from = match e.offset() {
                Offset::Offset(committed) => committed.max(low),
                _ => low,
            };
            lag += u64::try_from(high - from).unwrap_or(0);
        }
        Ok(lag)
    })
    .await
}
