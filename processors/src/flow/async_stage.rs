//! How one item goes through an async stage ([`Flow::then`](super::Flow::then)): the call,
//! its panics caught, and retries on a clone of the item as the stage's policy says. The
//! concurrency and ordering around it are [`Concurrent`](crate::concurrent::Concurrent)'s.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures_util::FutureExt;
use mailroom_core::Error;

use super::{give_up, Item, Meta, Step};
use crate::metrics::add;
use crate::stage::{panic_error, RunningStage};

/// One item through an async stage, with retries and panic catching.
pub(super) async fn run_async<T, U, F, Fut>(
    stage: Arc<RunningStage>,
    f: Arc<F>,
    item: Item<T>,
) -> Option<Step<U>>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<U, Error>>,
{
    use tracing::Instrument;
    add(&stage.counters.input, 1);
    let Item { value, meta } = item;
    let (arg, kept) = if stage.policy.backoff().is_some() {
        (value.clone(), Some(value))
    } else {
        (value, None)
    };
    let called = catch_unwind(AssertUnwindSafe(|| f(arg)));
    let result = match called {
        Ok(fut) => AssertUnwindSafe(fut.instrument(stage.span.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panic_error(&stage.name, panic))),
        Err(panic) => Err(panic_error(&stage.name, panic)),
    };
    let error = match result {
        Ok(u) => {
            add(&stage.counters.output, 1);
            return Some(Ok(Item { value: u, meta }));
        }
        Err(e) => e,
    };
    match (stage.retry_delay(&error, 1), kept) {
        (Some(delay), Some(value)) => {
            tokio::time::sleep(delay).await;
            retry_async(stage, f, value, meta, 2).await
        }
        _ => give_up(stage, meta, error, 1).await,
    }
}

/// Further attempts of an async stage (the first attempt moved nothing out of `value`).
async fn retry_async<T, U, F, Fut>(
    stage: Arc<RunningStage>,
    f: Arc<F>,
    value: T,
    meta: Meta,
    mut attempt: u32,
) -> Option<Step<U>>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<U, Error>>,
{
    use tracing::Instrument;
    loop {
        let called = catch_unwind(AssertUnwindSafe(|| f(value.clone())));
        let result = match called {
            Ok(fut) => AssertUnwindSafe(fut.instrument(stage.span.clone()))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panic_error(&stage.name, panic))),
            Err(panic) => Err(panic_error(&stage.name, panic)),
        };
        match result {
            Ok(u) => {
                add(&stage.counters.output, 1);
                return Some(Ok(Item { value: u, meta }));
            }
            Err(error) => match stage.retry_delay(&error, attempt) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return give_up(stage, meta, error, attempt).await,
            },
        }
    }
}
