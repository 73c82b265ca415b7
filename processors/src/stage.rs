//! A stage: how it is named and configured ([`StageSpec`]), and the stage as it runs: its span
//! and counters, and carrying out its error policy on a failed item (retry delays, skip,
//! requeue, dead letters stamped with the headers below).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::{Error, ErrorKind};

use crate::in_flight::InFlight;
use crate::metrics::{add, PipelineCounters, StageCounters};
use crate::policy::ErrorPolicy;
use crate::sink::Sink;
use crate::token::Tokens;

/// Header on a dead-lettered input: the pipeline stage that failed.
pub const DEAD_LETTER_STAGE_HEADER: &str = "x-mailroom-dead-letter-stage";
/// Header on a dead-lettered input: the kind of the error (`decode`, `panic`, ...).
pub const DEAD_LETTER_ERROR_KIND_HEADER: &str = "x-mailroom-dead-letter-error-kind";
/// Header on a dead-lettered input: the broker's delivery attempt of the input.
pub const DEAD_LETTER_DELIVERY_ATTEMPT_HEADER: &str = "x-mailroom-dead-letter-delivery-attempt";
/// Header on a dead-lettered input: the partition it was read from, where the broker has them.
pub const DEAD_LETTER_PARTITION_HEADER: &str = "x-mailroom-dead-letter-partition";
/// Header on a dead-lettered input: the offset it was read from, where the broker has them.
pub const DEAD_LETTER_OFFSET_HEADER: &str = "x-mailroom-dead-letter-offset";

/// How a stage is named and configured: its name, error policy and concurrency.
///
/// A `&str` converts into one with the default policy ([`ErrorPolicy::Fail`]).
#[derive(Clone, Debug)]
pub struct StageSpec {
    pub(crate) name: String,
    pub(crate) policy: ErrorPolicy,
    pub(crate) concurrency: usize,
}

/// A stage named `name` (fails the pipeline on error; concurrency 1).
pub fn stage(name: impl Into<String>) -> StageSpec {
    StageSpec {
        name: name.into(),
        policy: ErrorPolicy::Fail,
        concurrency: 1,
    }
}

impl StageSpec {
    /// What to do on an error or panic.
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Most items an async stage works on at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

impl From<&str> for StageSpec {
    fn from(name: &str) -> Self {
        stage(name)
    }
}

impl From<String> for StageSpec {
    fn from(name: String) -> Self {
        stage(name)
    }
}

/// A stage as it runs: its span, counters and policy.
pub(crate) struct RunningStage {
    pub name: Arc<str>,
    pub span: tracing::Span,
    pub counters: Arc<StageCounters>,
    pub pipeline: Arc<PipelineCounters>,
    pub in_flight: Arc<InFlight>,
    pub policy: ErrorPolicy,
    pub concurrency: usize,
}

/// A panic payload as an error the policy can handle.
pub(crate) fn panic_error(stage: &str, payload: Box<dyn Any + Send>) -> Error {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    // Core has no dedicated kind for a panic; InvalidInput marks it permanent, and the text
    // says what happened.
    Error::new(
        ErrorKind::InvalidInput,
        format!("stage '{stage}' panicked: {text}"),
    )
    .set_temporary(false)
}

impl RunningStage {
    /// Count a failure and decide whether to retry after `attempt` attempts.
    pub fn retry_delay(&self, error: &Error, attempt: u32) -> Option<Duration> {
        add(&self.counters.errors, 1);
        let backoff = self.policy.backoff()?;
        if !backoff.should_retry(error, attempt) {
            return None;
        }
        add(&self.counters.retried, 1);
        add(&self.pipeline.retried, 1);
        tracing::debug!(parent: &self.span, attempt, error = %error, "retrying");
        Some(backoff.delay(attempt))
    }

    /// Apply the terminal policy to a failed item; `Some(error)` fails the pipeline.
    pub async fn give_up(&self, tokens: Tokens, error: Error, attempts: u32) -> Option<Error> {
        match self.policy.terminal() {
            ErrorPolicy::Fail | ErrorPolicy::Retry { .. } => {
                tracing::error!(parent: &self.span, error = %error, "stage failed; stopping the pipeline");
                Some(self.context(error))
            }
            ErrorPolicy::Skip => {
                tracing::warn!(parent: &self.span, error = %error, "skipping item");
                add(&self.counters.skipped, tokens.len() as u64);
                add(&self.pipeline.skipped, tokens.len() as u64);
                tokens.done().await;
                None
            }
            ErrorPolicy::Requeue { delay } => {
                tracing::warn!(parent: &self.span, error = %error, "requeueing input");
                tokens.requeue(*delay).await;
                None
            }
            ErrorPolicy::DeadLetter(sink) => {
                let sink = sink.clone();
                self.dead_letter(&sink, tokens, &error, attempts).await
            }
        }
    }

    pub(crate) fn context(&self, error: Error) -> Error {
        let kind = error.kind();
        let temporary = error.is_temporary();
        Error::new(kind, format!("pipeline stage '{}' failed", self.name))
            .set_temporary(temporary)
            .with_source(error)
    }

    async fn dead_letter(
        &self,
        sink: &Sink,
        tokens: Tokens,
        error: &Error,
        attempts: u32,
    ) -> Option<Error> {
        let reason = format!("stage '{}': {error}", self.name);
        for token in tokens.into_vec() {
            let Some((mut message, info)) = token.original() else {
                continue;
            };
            stamp_dead_letter(&mut message, &info.source, &reason, attempts);
            let headers = message.headers_mut();
            // Names are constants and values short, so these inserts cannot fail.
            let _ = headers.insert(DEAD_LETTER_STAGE_HEADER, &*self.name);
            let _ = headers.insert(DEAD_LETTER_ERROR_KIND_HEADER, error.kind().as_str());
            let _ = headers.insert(
                DEAD_LETTER_DELIVERY_ATTEMPT_HEADER,
                info.attempt.to_string(),
            );
            if let Some(p) = info.partition {
                let _ = headers.insert(DEAD_LETTER_PARTITION_HEADER, p.to_string());
            }
            if let Some(o) = info.offset {
                let _ = headers.insert(DEAD_LETTER_OFFSET_HEADER, o.to_string());
            }
            match sink.producer.send(&sink.destination, message).await {
                Ok(_) => {
                    add(&self.counters.dead_lettered, 1);
                    add(&self.pipeline.dead_lettered, 1);
                    tracing::warn!(parent: &self.span, error = %error, "input dead-lettered");
                    if let Some(s) = token.done() {
                        s.run().await;
                    }
                }
                Err(e) => {
                    // The input stays unsettled and is redelivered once the pipeline stops.
                    return Some(
                        self.context(
                            Error::new(
                                e.kind(),
                                format!("cannot dead-letter to {}: {e}", sink.destination),
                            )
                            .with_source(error_copy(error)),
                        ),
                    );
                }
            }
        }
        None
    }
}

fn error_copy(error: &Error) -> Error {
    Error::new(error.kind(), error.to_string()).set_temporary(error.is_temporary())
}
