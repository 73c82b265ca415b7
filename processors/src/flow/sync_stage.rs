//! How a synchronous stage runs: inside the poll that received its item, handing the result
//! straight on; only a failed item's recovery (retries, then the error policy) is boxed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use mailroom_core::Error;

use super::{give_up, Item, Meta, Step};
use crate::metrics::{add, bump};
use crate::stage::{panic_error, RunningStage};

/// A synchronous stage as a stream: the stage runs inside the poll that received the item
/// and hands the result straight on, so the common case stores no future; only a failed
/// item's recovery is boxed.
///
/// The item is taken apart right where the upstream poll returns it and the output item is
/// built right where this poll returns it: an item is a few hundred bytes, and each extra
/// hand-over (a closure's argument, an intermediate enum) is another copy of it on every
/// message.
pub(super) struct SyncStream<T, U, F> {
    pub(super) upstream: BoxStream<'static, Step<T>>,
    pub(super) stage: Arc<RunningStage>,
    pub(super) f: Arc<F>,
    pub(super) retry_clone: Option<fn(&T) -> T>,
    pub(super) recovering: Option<BoxFuture<'static, Option<Step<U>>>>,
}

impl<T, U, F> futures_util::Stream for SyncStream<T, U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    F: Fn(T) -> SyncOutput<U> + Send + Sync + 'static,
{
    type Item = Step<U>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Step<U>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            let (value, meta) = match next_input(&mut this.recovering, &mut this.upstream, cx) {
                Ok(input) => input,
                Err(poll) => return poll,
            };
            let stage = &this.stage;
            bump(&stage.counters.input, 1);
            let kept = this.retry_clone.map(|c| c(&value));
            match call(stage, &*this.f, value) {
                SyncOutput::One(u) => {
                    bump(&stage.counters.output, 1);
                    return Poll::Ready(Some(Ok(Item { value: u, meta })));
                }
                SyncOutput::Filtered => {
                    add(&stage.counters.filtered, 1);
                    add(&stage.pipeline.filtered, meta.tokens.len() as u64);
                    meta.tokens.done_deferred(&stage.in_flight);
                }
                SyncOutput::Failed(error) => {
                    this.recovering = Some(Box::pin(recover(
                        stage.clone(),
                        this.f.clone(),
                        meta,
                        kept,
                        this.retry_clone,
                        error,
                    )));
                }
            }
        }
    }
}

/// What a synchronous stage's poll does before its own work: finish a recovery in progress
/// (emitting what it yields), then take the next item from upstream. `Err` is the poll result
/// to return as it is.
#[inline]
fn next_input<T, U>(
    recovering: &mut Option<BoxFuture<'static, Option<Step<U>>>>,
    upstream: &mut BoxStream<'static, Step<T>>,
    cx: &mut std::task::Context<'_>,
) -> Result<(T, Meta), std::task::Poll<Option<Step<U>>>> {
    use std::task::Poll;
    if let Some(pending) = recovering.as_mut() {
        let out = match pending.as_mut().poll(cx) {
            Poll::Ready(out) => out,
            Poll::Pending => return Err(Poll::Pending),
        };
        *recovering = None;
        if let Some(step) = out {
            return Err(Poll::Ready(Some(step)));
        }
    }
    match upstream.poll_next_unpin(cx) {
        Poll::Ready(Some(Ok(Item { value, meta }))) => Ok((value, meta)),
        Poll::Ready(Some(Err(e))) => Err(Poll::Ready(Some(Err(e)))),
        Poll::Ready(None) => Err(Poll::Ready(None)),
        Poll::Pending => Err(Poll::Pending),
    }
}

/// A `map` stage as a stream: [`SyncStream`] without the `SyncOutput` wrapper around each result
/// (a map neither filters nor fails, except by panicking), which is one copy less of every
/// message on the busiest kind of stage.
pub(super) struct MapStream<T, U, F> {
    pub(super) upstream: BoxStream<'static, Step<T>>,
    pub(super) stage: Arc<RunningStage>,
    pub(super) f: F,
    pub(super) recovering: Option<BoxFuture<'static, Option<Step<U>>>>,
}

impl<T, U, F> futures_util::Stream for MapStream<T, U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    F: Fn(T) -> U + Send + Sync + 'static,
{
    type Item = Step<U>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Step<U>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            // The busy path takes the item apart right where upstream returns it and builds
            // the output right where it is returned: every other hand-over (a `(value, meta)`
            // return value, one binding for both paths) is another copy of the whole item.
            if this.recovering.is_none() {
                match this.upstream.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(Item { value, meta }))) => {
                        match map_value(&this.stage, &this.f, value) {
                            Ok(u) => return Poll::Ready(Some(Ok(Item { value: u, meta }))),
                            Err(panic) => {
                                this.recovering = Some(map_panicked(&this.stage, meta, panic))
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            let (value, meta) = match next_input(&mut this.recovering, &mut this.upstream, cx) {
                Ok(input) => input,
                Err(poll) => return poll,
            };
            match map_value(&this.stage, &this.f, value) {
                Ok(u) => return Poll::Ready(Some(Ok(Item { value: u, meta }))),
                Err(panic) => this.recovering = Some(map_panicked(&this.stage, meta, panic)),
            }
        }
    }
}

/// Run a `map` function on one value, counting it; `Err` is its panic.
#[inline(always)]
fn map_value<T, U, F: Fn(T) -> U>(
    stage: &RunningStage,
    f: &F,
    value: T,
) -> Result<U, Box<dyn std::any::Any + Send>> {
    bump(&stage.counters.input, 1);
    let entered = stage.span.enter();
    let mapped = catch_unwind(AssertUnwindSafe(|| f(value)));
    drop(entered);
    if mapped.is_ok() {
        bump(&stage.counters.output, 1);
    }
    mapped
}

/// A `map` function panicked: as `recover` does for a stage that keeps no copy to retry with,
/// the policy is consulted (and counts the error), then the item is given up.
#[cold]
fn map_panicked<U: Send + 'static>(
    stage: &Arc<RunningStage>,
    meta: Meta,
    panic: Box<dyn std::any::Any + Send>,
) -> BoxFuture<'static, Option<Step<U>>> {
    let error = panic_error(&stage.name, panic);
    let stage = stage.clone();
    Box::pin(async move {
        let _ = stage.retry_delay(&error, 1);
        give_up(stage, meta, error, 1).await
    })
}

// The function is only ever called through a shared reference, never pinned, so moving the
// stage is sound whatever its type.
impl<T, U, F> Unpin for MapStream<T, U, F> {}

/// What a synchronous stage function made of one item.
pub(super) enum SyncOutput<U> {
    One(U),
    Filtered,
    Failed(Error),
}

/// Call a stage function, turning a panic into a failure.
#[inline(always)]
fn call<T, U, F>(stage: &RunningStage, f: &F, value: T) -> SyncOutput<U>
where
    F: Fn(T) -> SyncOutput<U>,
{
    let _entered = stage.span.enter();
    match catch_unwind(AssertUnwindSafe(|| f(value))) {
        Ok(out) => out,
        Err(panic) => SyncOutput::Failed(panic_error(&stage.name, panic)),
    }
}

/// A failed synchronous stage: retry as the policy says, then give up.
async fn recover<T, U, F>(
    stage: Arc<RunningStage>,
    f: Arc<F>,
    meta: Meta,
    mut kept: Option<T>,
    retry_clone: Option<fn(&T) -> T>,
    mut error: Error,
) -> Option<Step<U>>
where
    F: Fn(T) -> SyncOutput<U>,
{
    let mut attempt = 1;
    loop {
        let Some(delay) = stage.retry_delay(&error, attempt) else {
            return give_up(stage, meta, error, attempt).await;
        };
        let Some(value) = kept.take() else {
            return give_up(stage, meta, error, attempt).await;
        };
        tokio::time::sleep(delay).await;
        attempt += 1;
        kept = retry_clone.map(|c| c(&value));
        match call(&stage, &*f, value) {
            SyncOutput::One(u) => {
                add(&stage.counters.output, 1);
                return Some(Ok(Item { value: u, meta }));
            }
            SyncOutput::Filtered => {
                add(&stage.counters.filtered, 1);
                add(&stage.pipeline.filtered, meta.tokens.len() as u64);
                meta.tokens.done().await;
                return None;
            }
            SyncOutput::Failed(e) => error = e,
        }
    }
}
