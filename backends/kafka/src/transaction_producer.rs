//! The transactional producer's calls to librdkafka: fencing the id's previous holder, the
//! commit (the inputs' offsets, then the commit itself) and the abort. Each call blocks, so each
//! runs on the blocking pool, bounded by the backend's operation timeout; retriable errors are
//! retried until that bound. Which failures leave the unit usable is decided here too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::operation::COMMIT;
use mailroom_core::{Error, Result};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::Producer as _;
use rdkafka::TopicPartitionList;

use crate::connection::blocking;
use crate::producer::ProducerCore;
use crate::{error, BACKEND};

/// Why a commit did not happen, and whether the unit survives it.
pub(crate) enum CommitFailure {
    /// Nothing was committed; aborting makes the unit usable again.
    Abortable(Error),
    /// The unit cannot continue: fatal, fenced, or the outcome of the commit is unknown.
    Broken(Error),
}

/// Fence the id's previous holder: the coordinator aborts whatever transaction it left open and
/// bumps the producer epoch, so its later calls fail with `Fenced`.
pub(crate) async fn init(
    producer: &Arc<ProducerCore>,
    timeout: Duration,
    operation: &'static str,
) -> Result<()> {
    on_blocking_pool(producer, operation, move |p| {
        p.client().init_transactions(timeout)
    })
    .await
}

/// Abort the open transaction: its outputs are discarded.
pub(crate) async fn abort(
    producer: &Arc<ProducerCore>,
    timeout: Duration,
    operation: &'static str,
) -> Result<()> {
    on_blocking_pool(producer, operation, move |p| {
        retrying(timeout, |left| p.client().abort_transaction(left))
    })
    .await
}

/// Run one blocking transactional call off the async runtime, its error as a mailroom error.
async fn on_blocking_pool(
    producer: &Arc<ProducerCore>,
    operation: &'static str,
    call: impl FnOnce(&ProducerCore) -> KafkaResult<()> + Send + 'static,
) -> Result<()> {
    let producer = producer.clone();
    blocking(move || call(&producer).map_err(|e| error::map(e, operation))).await
}

/// The commit proper, on the blocking pool: the input offsets, then the commit.
pub(crate) fn commit(
    producer: &ProducerCore,
    offsets: &TopicPartitionList,
    group: &ConsumerGroupMetadata,
    timeout: Duration,
) -> std::result::Result<(), CommitFailure> {
    let started = Instant::now();
    if offsets.count() > 0 {
        retrying(timeout, |left| {
            producer
                .client()
                .send_offsets_to_transaction(offsets, group, left)
        })
        .map_err(|e| {
            if is_fatal(&e) {
                CommitFailure::Broken(error::map(e, COMMIT))
            } else {
                // Nothing is committed before commit_transaction: abort is always safe.
                CommitFailure::Abortable(error::map(e, COMMIT))
            }
        })?;
    }
    let left = timeout.saturating_sub(started.elapsed());
    retrying(left, |left| producer.client().commit_transaction(left)).map_err(|e| {
        if is_fatal(&e) {
            CommitFailure::Broken(error::map(e, COMMIT))
        } else if requires_abort(&e) {
            CommitFailure::Abortable(error::map(e, COMMIT))
        } else {
            // Timed out or refused in a state that does not say: the commit may still
            // complete on the broker, so aborting could contradict it.
            let e = error::map(e, COMMIT);
            CommitFailure::Broken(
                Error::new(
                    e.kind(),
                    "the commit's outcome is unknown (it may still complete on the broker)",
                )
                .with_boxed_source(Box::new(e))
                .with_backend(BACKEND)
                .with_operation(COMMIT),
            )
        }
    })
}

/// Whether librdkafka says the client instance is finished.
pub(crate) fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

/// Whether librdkafka says the transaction must be aborted.
fn requires_abort(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.txn_requires_abort())
}

/// Call `f` with the time left until it stops answering retriable errors or `bound` passes.
fn retrying(bound: Duration, mut f: impl FnMut(Duration) -> KafkaResult<()>) -> KafkaResult<()> {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match f(left) {
            Err(KafkaError::Transaction(t))
                if t.is_retriable() && !t.is_fatal() && Instant::now() + RETRY_PAUSE < deadline =>
            {
                tracing::debug!(error = %t, "retriable transactional error; retrying");
                std::thread::sleep(RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

const RETRY_PAUSE: Duration = Duration::from_millis(50);
