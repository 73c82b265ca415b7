//! After a send: settle the input now when the confirm is already there, else track the
//! confirm and settle when it arrives; a failed send is retried as the stage's policy says.

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::FutureExt;
use mailroom_core::{Error, PendingConfirm, Receipt};
use std::sync::Arc;

use super::Sink;
use crate::metrics::bump;
use crate::stage::RunningStage;
use crate::token::Tokens;

/// Confirms still to come, each resolving to the error that stops the pipeline, if any.
pub(super) type Confirms = FuturesUnordered<BoxFuture<'static, Option<Error>>>;

/// After an enqueue: settle now when the confirm is already there, else track it.
pub(super) async fn settle_enqueued(
    stage: &Arc<RunningStage>,
    sink: &Sink,
    enqueued: Result<PendingConfirm, Error>,
    tokens: Tokens,
    confirms: &mut Confirms,
) {
    if let Some(tokens) = enqueued_now(stage, sink, enqueued, tokens, confirms) {
        confirmed(stage, tokens).await;
    }
}

/// After an enqueue: the tokens back when the confirm is already there (the caller settles
/// them, awaiting the settle in place: usually it completes at once), else the confirm is
/// tracked in `confirms`.
#[must_use]
#[inline(always)]
pub(super) fn enqueued_now(
    stage: &Arc<RunningStage>,
    sink: &Sink,
    mut enqueued: Result<PendingConfirm, Error>,
    tokens: Tokens,
    confirms: &mut Confirms,
) -> Option<Tokens> {
    let ready = match &mut enqueued {
        Ok(pending) => pending.take_if_ready(),
        Err(_) => None,
    };
    match ready {
        Some(Ok(_)) => Some(tokens),
        ready => {
            track(stage, sink, enqueued, ready, tokens, confirms);
            None
        }
    }
}

/// A confirm that is not there yet, or a failed send: settled (or retried) in `confirms`.
#[cold]
fn track(
    stage: &Arc<RunningStage>,
    sink: &Sink,
    enqueued: Result<PendingConfirm, Error>,
    ready: Option<Result<Receipt, Error>>,
    tokens: Tokens,
    confirms: &mut Confirms,
) {
    match (enqueued, ready) {
        (_, Some(Err(e))) | (Err(e), _) => {
            confirms.push(failed(stage.clone(), sink.clone(), tokens, e).boxed())
        }
        (Ok(pending), _) => {
            let stage = stage.clone();
            let sink = sink.clone();
            confirms.push(
                async move {
                    match pending.await {
                        Ok(_) => {
                            confirmed(&stage, tokens).await;
                            None
                        }
                        Err(e) => failed(stage, sink, tokens, e).await,
                    }
                }
                .boxed(),
            );
        }
    }
}

pub(super) async fn confirmed(stage: &RunningStage, tokens: Tokens) {
    count_output(stage);
    match tokens.single() {
        Ok(Some(job)) => job.run().await,
        Ok(None) => {}
        Err(many) => many.done().await,
    }
}

/// One more message confirmed by a sink.
#[inline(always)]
pub(super) fn count_output(stage: &RunningStage) {
    bump(&stage.counters.output, 1);
    bump(&stage.pipeline.out, 1);
}

/// A send failed: retry it as the policy says, then give up.
pub(super) async fn failed(
    stage: Arc<RunningStage>,
    sink: Sink,
    tokens: Tokens,
    mut error: Error,
) -> Option<Error> {
    let mut attempt = 1;
    loop {
        let message = error.take_undelivered();
        let (Some(delay), Some(message)) = (stage.retry_delay(&error, attempt), message) else {
            return stage.give_up(tokens, error, attempt).await;
        };
        tracing::warn!(parent: &stage.span, error = %error, attempt, "send failed; retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
        match sink.producer.send(&sink.destination, message).await {
            Ok(_) => {
                confirmed(&stage, tokens).await;
                return None;
            }
            Err(e) => error = e,
        }
    }
}
