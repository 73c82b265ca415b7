//! Broker queue depth (and Kafka consumer lag) published as a gauge through the `metrics`
//! facade.
//!
//! A depth is the broker's answer to a question ([`Topology::queue_depth`](crate::Topology::queue_depth)), not something a
//! layer sees pass by, so it is polled: an application calls [`publish_queue_depth`] when it
//! wants a fresh figure, or spawns [`watch_queue_depth`] to refresh it on a period.

use std::time::Duration;

use crate::backend::Backend;
use crate::error::Result;

/// Messages waiting in a queue to be delivered, as the broker last told it (gauge, unit
/// messages; labels `messaging.system`, `messaging.destination.name`). On Kafka it is the
/// consumer lag of the queue's group. mailroom's name: OpenTelemetry's messaging conventions
/// define no depth or lag metric yet.
pub const QUEUE_DEPTH: &str = "messaging.queue.depth";

/// Ask the broker how many messages wait in `queue` and set the [`QUEUE_DEPTH`] gauge to it.
///
/// Returns the depth, or `None` (and sets nothing) where the backend cannot tell.
pub async fn publish_queue_depth(backend: &dyn Backend, queue: &str) -> Result<Option<u64>> {
    let depth = backend.topology().queue_depth(queue).await?;
    if let Some(depth) = depth {
        metrics::gauge!(
            QUEUE_DEPTH,
            "messaging.system" => backend.name(),
            "messaging.destination.name" => queue.to_owned(),
        )
        // A gauge holds an f64: exact up to 2^53 messages, far beyond any queue.
        .set(depth as f64);
    }
    Ok(depth)
}

/// Publish the depth of each of `queues` every `every`, until the future is dropped (spawn it,
/// and abort the task to stop).
///
/// A failed read is logged (`warn`) and retried at the next tick, so a broker that is away for
/// a while leaves the last figure in place rather than ending the watch; a queue whose backend
/// cannot tell is skipped.
pub async fn watch_queue_depth(backend: &dyn Backend, queues: &[String], every: Duration) {
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        metrics::Unit::Count,
        "Messages waiting in a queue to be delivered (Kafka: consumer lag of the queue's group)"
    );
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for queue in queues {
            if let Err(e) = publish_queue_depth(backend, queue).await {
                tracing::warn!(queue = %queue, error = %e, "could not read the queue depth");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    #[tokio::test]
    async fn default_queue_depth_is_unsupported() {
        struct Bare;
        #[async_trait::async_trait]
        impl Topology for Bare {
            async fn declare_exchange(&self, _: &crate::ExchangeSpec) -> Result<()> {
                Ok(())
            }
            async fn delete_exchange(&self, _: &str) -> Result<()> {
                Ok(())
            }
            async fn declare_queue(&self, _: &crate::QueueSpec) -> Result<()> {
                Ok(())
            }
            async fn delete_queue(&self, _: &str) -> Result<()> {
                Ok(())
            }
            async fn bind(&self, _: &crate::Binding) -> Result<()> {
                Ok(())
            }
            async fn unbind(&self, _: &crate::Binding) -> Result<()> {
                Ok(())
            }
        }
        assert_eq!(Bare.queue_depth("q").await.unwrap(), None);
    }
}
