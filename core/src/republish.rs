//! Settling by republishing: how a backend requeues or dead-letters a delivery when the broker
//! cannot do it for it (Kafka has no requeue, SQS no dead-letter reason, classic RabbitMQ
//! queues no attempt count).
//!
//! The order is the guarantee: the copy is published and confirmed first, and only then is the
//! original settled. A failure between the two leaves both (a duplicate, never a loss); a
//! failed publish leaves the original unsettled, to be redelivered.

use std::future::Future;

use crate::delivery::stamp_dead_letter;
use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::operation::NACK;

/// The backend side of one republish: the copy's publish and the original's settle.
pub trait Republish: Send {
    /// Publish `message` to the queue (or topic) `queue` and wait until the broker confirmed it.
    /// `attempt` is the delivery attempt a requeued copy carries; `None` for a dead letter.
    fn publish_copy(
        &mut self,
        queue: &str,
        message: Message,
        attempt: Option<u32>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The copy is confirmed: remove the original from its queue.
    fn settle_original(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// The copy failed: hand the original back at once, where the broker has a way to. By
    /// default nothing is done and the broker redelivers it when its lease runs out.
    fn release_original(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Publish `message` to `queue`, then settle the original; on a failed publish release the
/// original and return the error (named as the `nack` it is part of).
pub async fn republish<R: Republish>(
    backend: &mut R,
    queue: &str,
    message: Message,
    attempt: Option<u32>,
) -> Result<()> {
    match backend.publish_copy(queue, message, attempt).await {
        Ok(()) => backend.settle_original().await,
        Err(e) => {
            backend.release_original().await;
            Err(e.with_operation(NACK))
        }
    }
}

/// Dead-letter `message` (the original's content) from `source`: a stamped copy to
/// `dead_letter_queue` and then the original settled; without a dead-letter queue the message
/// is discarded, as AMQP does, with a warning.
pub async fn dead_letter<R: Republish>(
    backend: &mut R,
    dead_letter_queue: Option<&str>,
    message: &Message,
    source: &str,
    reason: &str,
    attempts: u32,
) -> Result<()> {
    let Some(dead_letter_queue) = dead_letter_queue else {
        warn_discarded(source, message.id(), reason);
        return backend.settle_original().await;
    };
    let mut dead = message.clone();
    stamp_dead_letter(&mut dead, source, reason, attempts);
    republish(backend, dead_letter_queue, dead, None).await
}

/// Say that a message dead-lettered from a queue without a dead-letter queue was discarded.
pub fn warn_discarded(source: &str, id: &MessageId, reason: &str) {
    tracing::warn!(
        queue = source,
        %id,
        reason,
        "message dead-lettered from a queue without a dead-letter queue: discarded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::DEAD_LETTER_REASON_HEADER;
    use crate::{Error, ErrorKind};

    /// Records the calls a republish makes; the publish fails when `refuse` is set.
    #[derive(Default)]
    struct Recording {
        refuse: bool,
        calls: Vec<String>,
    }

    impl Republish for Recording {
        async fn publish_copy(
            &mut self,
            queue: &str,
            message: Message,
            attempt: Option<u32>,
        ) -> Result<()> {
            let reason = message.headers().get(DEAD_LETTER_REASON_HEADER);
            self.calls
                .push(format!("publish {queue} {attempt:?} {reason:?}"));
            if self.refuse {
                return Err(Error::new(ErrorKind::Rejected, "refused").with_operation("send"));
            }
            Ok(())
        }

        async fn settle_original(&mut self) -> Result<()> {
            self.calls.push("settle".into());
            Ok(())
        }

        async fn release_original(&mut self) {
            self.calls.push("release".into());
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("recording never waits")
    }

    #[test]
    fn the_original_is_settled_only_after_the_copy_is_confirmed() {
        let mut r = Recording::default();
        run(republish(&mut r, "q", Message::new("x"), Some(2))).unwrap();
        assert_eq!(r.calls, ["publish q Some(2) None", "settle"]);

        let mut r = Recording {
            refuse: true,
            ..Recording::default()
        };
        let err = run(republish(&mut r, "q", Message::new("x"), Some(2))).unwrap_err();
        assert_eq!(r.calls, ["publish q Some(2) None", "release"]);
        assert_eq!(err.operation(), Some("nack"));
    }

    #[test]
    fn a_dead_letter_is_stamped_or_discarded() {
        let mut r = Recording::default();
        run(dead_letter(
            &mut r,
            Some("dlq"),
            &Message::new("x"),
            "q",
            "bad",
            3,
        ))
        .unwrap();
        assert_eq!(r.calls, ["publish dlq None Some(\"bad\")", "settle"]);

        let mut r = Recording::default();
        run(dead_letter(&mut r, None, &Message::new("x"), "q", "bad", 3)).unwrap();
        assert_eq!(r.calls, ["settle"]);
    }
}
