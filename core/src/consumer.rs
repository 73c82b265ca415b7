//! Receiving: the consumer trait, its options, and a `Stream` view of it.

use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::delivery::Delivery;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Timestamp;

/// Where a replaying consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// From the oldest retained message.
    Earliest,
    /// Only messages sent from now on.
    Latest,
    /// From this offset (in every partition).
    Offset(i64),
    /// From the first message at or after this time.
    Time(Timestamp),
}

/// How a consumer subscribes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// Most unsettled deliveries held at once (the broker's prefetch / QoS); backend default if
    /// unset.
    pub prefetch: Option<u32>,
    /// Start from an earlier position (needs `replay`).
    pub replay: Option<Replay>,
}

impl ConsumerOptions {
    /// Set the prefetch.
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Replay from a position.
    pub fn replay(mut self, replay: Replay) -> Self {
        self.replay = Some(replay);
        self
    }
}

/// Receives deliveries from one queue.
///
/// `receive` is cancel-safe: dropping its future before it resolves loses no message, so it can
/// sit in a `select!` or under a timeout.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; waits until one arrives. `Closed` once the consumer is closed.
    async fn receive(&mut self) -> Result<Delivery>;

    /// The next delivery, or `None` if none arrives within `timeout`.
    async fn receive_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>> {
        match tokio::time::timeout(timeout, self.receive()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// A delivery that is already here, without waiting: `None` when `receive` would wait.
    ///
    /// The default polls `receive` once (it is cancel-safe, so nothing is lost when it is not
    /// ready); a backend that can look without building a future overrides it. A loop that
    /// takes what is ready before it waits (a pipeline's source) calls this per message.
    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        futures_util::FutureExt::now_or_never(self.receive())
    }

    /// Stop receiving. Deliveries handed out and never settled are redelivered; settling them
    /// after close works where the backend's settle path outlives the consumer (memory, SQS,
    /// Kafka) and fails with `Closed` where it does not (RabbitMQ's channel).
    async fn close(&mut self) -> Result<()>;
}

/// A consumer as a `Stream` of deliveries, ending when the consumer is closed.
pub fn into_stream(consumer: Box<dyn Consumer>) -> impl Stream<Item = Result<Delivery>> + Send {
    futures_util::stream::unfold(Some(consumer), |state| async move {
        let mut consumer = state?;
        match consumer.receive().await {
            Ok(delivery) => Some((Ok(delivery), Some(consumer))),
            Err(e) if e.kind() == ErrorKind::Closed => None,
            // Report the error and stop: a broken consumer should not spin.
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Extension methods for boxed consumers.
pub trait ConsumerExt {
    /// Turn the consumer into a `Stream` of deliveries.
    fn into_stream(self) -> std::pin::Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>;
}

impl ConsumerExt for Box<dyn Consumer> {
    fn into_stream(self) -> std::pin::Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>> {
        Box::pin(into_stream(self))
    }
}

/// The error a closed consumer returns.
pub fn closed_consumer(backend: &'static str) -> Error {
    Error::closed("consumer is closed")
        .with_backend(backend)
        .with_operation(crate::operation::RECEIVE)
}
