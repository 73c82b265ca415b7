//! Where a consumer with a replay option starts: one offset per partition, resolved when the
//! consumer opens.
//!
//! `Latest` and `Time` are resolved to offsets before the group join, so that messages sent in
//! between still count, and so that a broker that cannot answer fails `consume` with an error
//! instead of the replay being skipped later in a rebalance callback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::operation::CONSUME;
use mailroom_core::{Error, Replay, Result};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};

use crate::connection::{blocking, Connection};
use crate::offsets::TopicPartition;
use crate::{error, BACKEND};

/// How long to wait before asking again about a partition the broker gave no answer for.
const LOOKUP_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Resolve the replay option into a start offset per partition of `partitions`.
pub(crate) async fn replay_plan(
    connection: &Arc<Connection>,
    replay: Option<Replay>,
    partitions: &[(String, Vec<i32>)],
) -> Result<HashMap<TopicPartition, Offset>> {
    let Some(replay) = replay else {
        return Ok(HashMap::new());
    };
    let all: Vec<TopicPartition> = partitions
        .iter()
        .flat_map(|(t, ps)| {
            let topic: Arc<str> = Arc::from(t.as_str());
            ps.iter().map(move |p| (topic.clone(), *p))
        })
        .collect();
    let at = |o: Offset| all.iter().map(|tp| (tp.clone(), o)).collect();
    Ok(match replay {
        Replay::Earliest => at(Offset::Beginning),
        Replay::Offset(o) => at(Offset::Offset(o)),
        Replay::Latest => {
            let connection = connection.clone();
            blocking(move || {
                let timeout = connection.config.operation_timeout;
                let mut plan = HashMap::new();
                for tp in all {
                    let high = high_watermark(&connection, &tp, timeout)?;
                    plan.insert(tp, Offset::Offset(high));
                }
                Ok(plan)
            })
            .await?
        }
        Replay::Time(t) => {
            let connection = connection.clone();
            let ms = t.as_millis() as i64;
            blocking(move || offsets_at_time(&connection, all, ms)).await?
        }
    })
}

/// What a timestamp lookup said about one partition.
#[derive(Debug, PartialEq)]
enum TimeLookup {
    /// The offset of the first record at or after the time.
    At(i64),
    /// No record at or after the time: start where the next record will be written.
    PastTheEnd,
    /// The broker gave no answer for this partition (its leader not known yet, a timeout):
    /// the lookup must be asked again; it says nothing about where the time falls.
    Unanswered(KafkaError),
}

/// Read one partition's entry of librdkafka's answer to `offsets_for_times`.
///
/// librdkafka reports a partition it could not look up through the entry's error and leaves
/// its offset at "end" (-1) — the same offset that means "no record at or after the time".
/// The error decides: read alone, the offset would turn a failed lookup into "nothing to
/// replay" and the consumer would silently skip every record it was asked to replay.
fn read_time_lookup(offset: Offset, error: KafkaResult<()>) -> TimeLookup {
    match (error, offset) {
        (Err(e), _) => TimeLookup::Unanswered(e),
        (Ok(()), Offset::Offset(o)) => TimeLookup::At(o),
        (Ok(()), _) => TimeLookup::PastTheEnd,
    }
}

/// The first offset at or after `ms` (milliseconds since the epoch) of every partition in
/// `all`, asking again while the broker leaves some partition unanswered (blocking).
fn offsets_at_time(
    connection: &Connection,
    all: Vec<TopicPartition>,
    ms: i64,
) -> Result<HashMap<TopicPartition, Offset>> {
    let timeout = connection.config.operation_timeout;
    let deadline = Instant::now() + timeout;
    // offsets_for_times is a consumer call in rdkafka: a consumer outside any group, for this
    // lookup only.
    let lookup: BaseConsumer = connection
        .config
        .client_config(&[])
        .create()
        .map_err(|e| error::map(e, CONSUME))?;
    loop {
        let mut times = TopicPartitionList::new();
        for (topic, partition) in &all {
            let _ = times.add_partition_offset(topic, *partition, Offset::Offset(ms));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let found = lookup
            .offsets_for_times(times, remaining.max(LOOKUP_RETRY_PAUSE))
            .map_err(|e| error::map(e, CONSUME))?;
        let mut plan = HashMap::new();
        let mut unanswered = None;
        for tp in &all {
            let answer = match found.find_partition(&tp.0, tp.1) {
                Some(entry) => read_time_lookup(entry.offset(), entry.error()),
                None => TimeLookup::Unanswered(KafkaError::OffsetFetch(
                    rdkafka::error::RDKafkaErrorCode::UnknownPartition,
                )),
            };
            match answer {
                TimeLookup::At(o) => {
                    plan.insert(tp.clone(), Offset::Offset(o));
                }
                TimeLookup::PastTheEnd => {
                    let high = high_watermark(connection, tp, timeout)?;
                    plan.insert(tp.clone(), Offset::Offset(high));
                }
                TimeLookup::Unanswered(e) => {
                    unanswered = Some((tp.clone(), e));
                    break;
                }
            }
        }
        let Some(((topic, partition), cause)) = unanswered else {
            return Ok(plan);
        };
        if Instant::now() >= deadline {
            let kind = error::map(cause.clone(), CONSUME).kind();
            return Err(Error::new(
                kind,
                format!(
                    "replay from time {ms} ms: the broker did not say where that time falls in \
                     partition {partition} of '{topic}' within {timeout:?} ({cause})"
                ),
            )
            .with_backend(BACKEND)
            .with_operation(CONSUME)
            .with_source(cause));
        }
        std::thread::sleep(LOOKUP_RETRY_PAUSE);
    }
}

/// The offset the next record of `tp` will get (blocking).
fn high_watermark(connection: &Connection, tp: &TopicPartition, timeout: Duration) -> Result<i64> {
    let (_, high) = connection
        .admin
        .inner()
        .fetch_watermarks(&tp.0, tp.1, timeout)
        .map_err(|e| error::map(e, CONSUME))?;
    Ok(high)
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn a_partition_the_broker_did_not_answer_for_is_asked_again_not_read_as_empty() {
        let leader_unknown = KafkaError::OffsetFetch(RDKafkaErrorCode::LeaderNotAvailable);
        assert_eq!(
            read_time_lookup(Offset::End, Err(leader_unknown.clone())),
            TimeLookup::Unanswered(leader_unknown)
        );
    }

    #[test]
    fn an_answered_partition_starts_at_the_offset_found_or_past_the_end() {
        assert_eq!(
            read_time_lookup(Offset::Offset(2), Ok(())),
            TimeLookup::At(2)
        );
        assert_eq!(
            read_time_lookup(Offset::End, Ok(())),
            TimeLookup::PastTheEnd
        );
    }
}
