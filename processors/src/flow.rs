//! The typed pipeline builder: sources, then stages that change the item type, then sinks.

use std::future::{ready, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::future::Either;
use futures_util::stream::{self, BoxStream, StreamExt};
use futures_util::FutureExt;
use mailroom_core::{Consumer, Delivery, Error, ErrorKind, Message, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::concurrent::Concurrent;
use crate::metrics::{add, bump, Metrics};
use crate::policy::{panic_error, ErrorPolicy, StageRt, StageSpec};
use crate::token::{Settlement, Shared, Slots, Token, Tokens};

/// How items are ordered while async stages work on several at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Items with the same key are processed one at a time, in arrival order; different keys
    /// in parallel. Items without a key are independent of each other.
    #[default]
    PerKey,
    /// Items from the same source partition (the same consumer when the broker has no
    /// partitions) are processed in order; different partitions in parallel.
    PerPartition,
    /// No order is kept: any item may overtake any other.
    Unordered,
}

/// How a source's messages are spread, so the builder can tell whether keyed state is correct
/// when several instances of the pipeline share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Partitioning {
    /// Nothing is known: instances may see any mix of keys.
    #[default]
    Unknown,
    /// Every message with a given key goes to the same instance (a Kafka topic partitioned by
    /// the message key, consumed by one consumer group).
    ByKey,
}

/// A source: a consumer and what is known about how its messages are partitioned.
pub struct Source {
    consumer: Box<dyn Consumer>,
    partitioning: Partitioning,
}

impl Source {
    /// A source with unknown partitioning.
    pub fn new(consumer: Box<dyn Consumer>) -> Self {
        Source {
            consumer,
            partitioning: Partitioning::Unknown,
        }
    }

    /// Declare that the source delivers every key to one instance only.
    pub fn partitioned_by_key(mut self) -> Self {
        self.partitioning = Partitioning::ByKey;
        self
    }
}

impl From<Box<dyn Consumer>> for Source {
    fn from(consumer: Box<dyn Consumer>) -> Self {
        Source::new(consumer)
    }
}

/// The settings of a pipeline, set before its sources.
pub struct Pipeline {
    pub(crate) ctx: Ctx,
    pub(crate) drive: futures_util::future::BoxFuture<'static, Result<(), Error>>,
}

/// Configures a pipeline and adds its sources.
pub struct PipelineBuilder {
    sources: Vec<Source>,
    max_in_flight: usize,
    ordering: Ordering,
    drain_timeout: Duration,
    log_every: Option<Duration>,
    scaled_out: bool,
}

impl Pipeline {
    /// Start configuring a pipeline.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder {
            sources: Vec::new(),
            max_in_flight: 1024,
            ordering: Ordering::PerKey,
            drain_timeout: Duration::from_secs(30),
            log_every: None,
            scaled_out: false,
        }
    }
}

impl PipelineBuilder {
    /// Most inputs held at once, from receive to settle (at least 1). This bounds the
    /// pipeline's memory: a slow sink slows the source.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// How async stages order their work.
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// How long a graceful shutdown may take to drain before unfinished inputs are released.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Log a counters snapshot at this interval while running.
    pub fn log_every(mut self, interval: Duration) -> Self {
        self.log_every = Some(interval);
        self
    }

    /// Declare that several instances of this pipeline share its sources. Keyed state then
    /// needs every source partitioned by key, or the builder refuses it.
    pub fn scaled_out(mut self) -> Self {
        self.scaled_out = true;
        self
    }

    /// Add a source; several sources are merged.
    pub fn source(mut self, source: impl Into<Source>) -> Self {
        self.sources.push(source.into());
        self
    }

    /// The merged stream of every source's messages, ready for stages.
    pub fn flow(self) -> Flow<Message> {
        let slots = Arc::new(Slots::new(self.max_in_flight));
        let metrics = Metrics::new(slots.clone(), self.max_in_flight);
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            counters: metrics.pipeline.clone(),
            slots,
            settle_tx,
            keep_originals: AtomicBool::new(false),
        });
        // Each source subscribes its own receiver.
        let (stop_tx, _) = watch::channel(false);
        let keyed_sources = !self.sources.is_empty()
            && self
                .sources
                .iter()
                .all(|s| s.partitioning == Partitioning::ByKey);
        let mut errors = Vec::new();
        if self.sources.is_empty() {
            errors.push(Error::config("a pipeline needs at least one source"));
        }
        let mut ctx = Ctx {
            metrics,
            shared,
            ordering: self.ordering,
            max_in_flight: self.max_in_flight,
            drain_timeout: self.drain_timeout,
            log_every: self.log_every,
            scaled_out: self.scaled_out,
            keyed_sources,
            stop: stop_tx,
            settle_rx: Some(settle_rx),
            stopped: Arc::new(Mutex::new(Vec::new())),
            errors,
            sources: 0,
        };
        let mut streams: Vec<BoxStream<'static, Step<Message>>> = self
            .sources
            .into_iter()
            .map(|source| ctx.add_source(source).boxed())
            .collect();
        let stream = if streams.len() == 1 {
            streams.remove(0)
        } else {
            stream::select_all(streams).boxed()
        };
        Flow { stream, ctx }
    }
}

impl Ctx {
    /// Another source of this pipeline, as a stream: it shares the in-flight bound and stops
    /// on the pipeline's shutdown.
    pub(crate) fn add_source(&mut self, source: Source) -> SourcePoll {
        let index = self.sources;
        self.sources += 1;
        SourcePoll {
            state: Some(SourceState {
                consumer: source.consumer,
                index,
                stop: self.stop.subscribe(),
                shared: self.shared.clone(),
                stopped: self.stopped.clone(),
                deliveries: std::cell::Cell::new(0),
            }),
            slow: None,
            done: false,
        }
    }
}

/// What every flow of one pipeline shares, moved from stage to stage.
pub(crate) struct Ctx {
    pub metrics: Metrics,
    pub shared: Arc<Shared>,
    pub ordering: Ordering,
    pub max_in_flight: usize,
    pub drain_timeout: Duration,
    pub log_every: Option<Duration>,
    pub scaled_out: bool,
    pub keyed_sources: bool,
    pub stop: watch::Sender<bool>,
    pub settle_rx: Option<mpsc::UnboundedReceiver<Settlement>>,
    /// Sources whose intake stopped, closed once the drain is over (see `StoppedSources`).
    pub stopped: StoppedSources,
    /// Problems found while building, reported by the terminal step.
    pub errors: Vec<Error>,
    /// Sources added so far (each one's index keeps its lanes apart).
    pub sources: u64,
}

impl Ctx {
    pub fn stage(&self, spec: StageSpec) -> Arc<StageRt> {
        if matches!(spec.policy.terminal(), ErrorPolicy::DeadLetter(_)) {
            self.keep_originals();
        }
        let counters = self.metrics.stage(&spec.name);
        Arc::new(StageRt {
            span: tracing::info_span!("stage", name = %spec.name),
            name: Arc::from(spec.name.as_str()),
            counters,
            pipeline: self.metrics.pipeline.clone(),
            shared: self.shared.clone(),
            policy: spec.policy,
            concurrency: spec.concurrency,
        })
    }
}

impl Ctx {
    /// Make every input keep its original message, for a stage that sends it on (a dead
    /// letter, a late input).
    pub fn keep_originals(&self) {
        self.shared
            .keep_originals
            .store(true, AtomicOrdering::Relaxed);
    }
}

/// Where an item came from and what it must settle.
pub(crate) struct Meta {
    pub tokens: Tokens,
    pub key: Option<Arc<str>>,
    pub lane: u64,
    pub event_time: Option<Timestamp>,
}

impl Meta {
    pub fn fork(&mut self) -> Meta {
        Meta {
            tokens: self.tokens.fork(),
            key: self.key.clone(),
            lane: self.lane,
            event_time: self.event_time,
        }
    }
}

/// An item on its way through the stages.
pub(crate) struct Item<T> {
    pub value: T,
    pub meta: Meta,
}

/// An item, or the error that fails the pipeline.
pub(crate) type Step<T> = Result<Item<T>, Error>;

/// A stream of `T` items inside a pipeline under construction.
///
/// Each stage method consumes the flow and returns one of the stage's output type, so a stage
/// that expects the wrong type does not compile.
pub struct Flow<T> {
    pub(crate) stream: BoxStream<'static, Step<T>>,
    pub(crate) ctx: Ctx,
}

/// Consumers whose intake has stopped, kept open until the pipeline has drained.
///
/// A consumer is closed only after the inputs it delivered are settled: a backend may batch
/// acks and wait for them in `close` (SQS does), so closing first would leave the drain's acks
/// with nothing waiting for them, or make each one wait on its own.
pub(crate) type StoppedSources = Arc<Mutex<Vec<Box<dyn Consumer>>>>;

struct SourceState {
    consumer: Box<dyn Consumer>,
    index: u64,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    stopped: StoppedSources,
    /// Numbers this source's deliveries, to tell two deliveries of one message apart.
    deliveries: std::cell::Cell<u64>,
}

/// A delivery and how many slots were held once its slot was taken.
type Received = Option<Result<(Delivery, usize), Error>>;

/// One source as a stream, polled inside the pipeline's task.
///
/// The busy path takes a free slot and a ready delivery without awaiting
/// (`Consumer::try_receive`, which loses nothing when none is ready). Only when the source must
/// wait does it box a future that owns the consumer and waits for a slot, a delivery or the
/// stop signal.
pub(crate) struct SourcePoll {
    state: Option<SourceState>,
    slow: Option<BoxFuture<'static, (SourceState, Received)>>,
    done: bool,
}

impl futures_util::Stream for SourcePoll {
    type Item = Step<Message>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Step<Message>>> {
        use std::task::Poll;
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(slow) = self.slow.as_mut() {
                let (state, received) = match slow.as_mut().poll(cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => return Poll::Pending,
                };
                self.slow = None;
                let item = match received {
                    None => {
                        self.done = true;
                        state.park();
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => {
                        self.done = true;
                        Err(e)
                    }
                    Some(Ok((delivery, held))) => Ok(state.item(delivery, held)),
                };
                self.state = Some(state);
                return Poll::Ready(Some(item));
            }
            let Some(state) = self.state.as_mut() else {
                self.done = true;
                continue;
            };
            // Only `true` is ever sent, so an unchanged value means "not stopping": a version
            // check is one atomic load, where `borrow` takes the channel's read lock.
            let stopping = state.stop.has_changed().unwrap_or(false) && *state.stop.borrow();
            if !stopping {
                if let Some(held) = state.shared.slots.try_take() {
                    match state.consumer.try_receive() {
                        Some(Ok(delivery)) => {
                            return Poll::Ready(Some(Ok(state.item(delivery, held))));
                        }
                        // Errors and waiting both go the slow way, which knows what to do.
                        _ => state.shared.slots.give_back(),
                    }
                }
            }
            if let Some(state) = self.state.take() {
                self.slow = Some(Box::pin(wait_for_delivery(state)));
            }
        }
    }
}

impl SourceState {
    /// Intake is over: the consumer waits, open, for the end of the drain.
    fn park(self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        stopped.push(self.consumer);
    }

    /// The item of a delivery that took a slot, `held` slots being taken then.
    #[inline(always)]
    fn item(&self, delivery: Delivery, held: usize) -> Item<Message> {
        let counters = &self.shared.counters;
        bump(&counters.received, 1);
        let held = held as u64;
        // A plain read first: the peak rarely moves, and a read is cheaper than a fetch_max.
        if held > counters.in_flight_peak.load(AtomicOrdering::Relaxed) {
            counters
                .in_flight_peak
                .fetch_max(held, AtomicOrdering::Relaxed);
        }
        let (value, info, obligation) = delivery.into_parts();
        // The key is shared with the message (one `Arc`), not copied.
        let (value, key) = if value.key().is_some() {
            let parts = value.into_parts();
            let key = parts.key.clone();
            (Message::from_parts(parts), key)
        } else {
            (value, None)
        };
        let event_time = value.timestamp();
        let lane = (self.index << 32) ^ info.partition.map_or(0, |p| u64::from(p as u32));
        let original = self
            .shared
            .keep_originals
            .load(AtomicOrdering::Relaxed)
            .then(|| value.clone());
        let delivery = self.deliveries.get();
        self.deliveries.set(delivery + 1);
        let token = Token::new(
            obligation,
            info,
            lane,
            delivery,
            original,
            self.shared.clone(),
        );
        Item {
            value,
            meta: Meta {
                tokens: Tokens::One(token),
                key,
                lane,
                event_time,
            },
        }
    }
}

/// Wait for a free slot and a delivery, or the stop signal (which ends intake; the consumer
/// is closed after the drain).
async fn wait_for_delivery(mut s: SourceState) -> (SourceState, Received) {
    let shared = s.shared.clone();
    let mut failures = 0u32;
    loop {
        if *s.stop.borrow() {
            return (s, None);
        }
        let held = tokio::select! {
            biased;
            held = shared.slots.take() => held,
            _ = s.stop.wait_for(|stop| *stop) => continue,
        };
        // Gives the slot back on every way out but a delivery, including this future being
        // dropped while it waits.
        let slot = SlotGuard(Some(&shared.slots));
        let received = tokio::select! {
            biased;
            received = s.consumer.receive() => received,
            _ = s.stop.wait_for(|stop| *stop) => continue,
        };
        match received {
            Ok(d) => {
                slot.keep();
                return (s, Some(Ok((d, held))));
            }
            Err(e) if e.kind() == ErrorKind::Closed => return (s, None),
            Err(e) if e.is_temporary() && failures < 10 => {
                failures += 1;
                tracing::warn!(error = %e, failures, "source receive failed; retrying");
                drop(slot);
                tokio::time::sleep(Duration::from_millis(50 << failures.min(6))).await;
            }
            Err(e) => return (s, Some(Err(e))),
        }
    }
}

/// A slot taken for a delivery that has not arrived yet.
struct SlotGuard<'a>(Option<&'a Slots>);

impl SlotGuard<'_> {
    /// The delivery arrived: its input holds the slot from now on.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(slots) = self.0.take() {
            slots.give_back();
        }
    }
}

/// A synchronous stage as a stream: the stage runs inside the poll that received the item
/// and hands the result straight on, so the common case stores no future; only a failed
/// item's recovery is boxed.
///
/// The item is taken apart right where the upstream poll returns it and the output item is
/// built right where this poll returns it: an item is a few hundred bytes, and each extra
/// hand-over (a closure's argument, an intermediate enum) is another copy of it on every
/// message.
struct SyncStream<T, U, F> {
    upstream: BoxStream<'static, Step<T>>,
    st: Arc<StageRt>,
    f: Arc<F>,
    retry_clone: Option<fn(&T) -> T>,
    recovering: Option<BoxFuture<'static, Option<Step<U>>>>,
}

impl<T, U, F> futures_util::Stream for SyncStream<T, U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    F: Fn(T) -> Out<U> + Send + Sync + 'static,
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
            let st = &this.st;
            bump(&st.counters.input, 1);
            let kept = this.retry_clone.map(|c| c(&value));
            match call(st, &*this.f, value) {
                Out::One(u) => {
                    bump(&st.counters.output, 1);
                    return Poll::Ready(Some(Ok(Item { value: u, meta })));
                }
                Out::Filtered => {
                    add(&st.counters.filtered, 1);
                    add(&st.pipeline.filtered, meta.tokens.len() as u64);
                    meta.tokens.done_deferred(&st.shared);
                }
                Out::Failed(error) => {
                    this.recovering = Some(Box::pin(recover(
                        st.clone(),
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

/// A `map` stage as a stream: [`SyncStream`] without the `Out` wrapper around each result
/// (a map neither filters nor fails, except by panicking), which is one copy less of every
/// message on the busiest kind of stage.
struct MapStream<T, U, F> {
    upstream: BoxStream<'static, Step<T>>,
    st: Arc<StageRt>,
    f: F,
    recovering: Option<BoxFuture<'static, Option<Step<U>>>>,
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
            let (value, meta) = match next_input(&mut this.recovering, &mut this.upstream, cx) {
                Ok(input) => input,
                Err(poll) => return poll,
            };
            let st = &this.st;
            bump(&st.counters.input, 1);
            let entered = st.span.enter();
            let mapped = catch_unwind(AssertUnwindSafe(|| (this.f)(value)));
            drop(entered);
            match mapped {
                Ok(u) => {
                    bump(&st.counters.output, 1);
                    return Poll::Ready(Some(Ok(Item { value: u, meta })));
                }
                Err(panic) => {
                    // As `recover` does for a stage that keeps no copy to retry with: the
                    // policy is consulted (and counts the error), then the item is given up.
                    let error = panic_error(&st.name, panic);
                    let st = st.clone();
                    this.recovering = Some(Box::pin(async move {
                        let _ = st.retry_delay(&error, 1);
                        give_up(st, meta, error, 1).await
                    }));
                }
            }
        }
    }
}

// The function is only ever called through a shared reference, never pinned, so moving the
// stage is sound whatever its type.
impl<T, U, F> Unpin for MapStream<T, U, F> {}

/// What a synchronous stage function made of one item.
pub(crate) enum Out<U> {
    One(U),
    Filtered,
    Failed(Error),
}

impl<T: Send + 'static> Flow<T> {
    /// The pipeline's live counters (also available from the built pipeline).
    pub fn metrics(&self) -> Metrics {
        self.ctx.metrics.clone()
    }

    /// Apply a synchronous stage that emits zero or one item per input.
    fn sync_stage<U, F>(self, spec: StageSpec, retry_clone: Option<fn(&T) -> T>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> Out<U> + Send + Sync + 'static,
    {
        let st = self.ctx.stage(spec);
        let f = Arc::new(f);
        let retry_clone = retry_clone.filter(|_| st.policy.backoff().is_some());
        Flow {
            stream: SyncStream {
                upstream: self.stream,
                st,
                f,
                retry_clone,
                recovering: None,
            }
            .boxed(),
            ctx: self.ctx,
        }
    }

    /// Change each item.
    pub fn map<U, F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        let st = self.ctx.stage(spec.into());
        Flow {
            stream: MapStream {
                upstream: self.stream,
                st,
                f,
                recovering: None,
            }
            .boxed(),
            ctx: self.ctx,
        }
    }

    /// Keep the items `f` accepts; the inputs of the others are acked.
    pub fn filter<F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<T>
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), None, move |t| {
            if f(&t) {
                Out::One(t)
            } else {
                Out::Filtered
            }
        })
    }

    /// Change and filter in one step: `None` drops the item (its input is acked).
    pub fn filter_map<U, F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> Option<U> + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), None, move |t| match f(t) {
            Some(u) => Out::One(u),
            None => Out::Filtered,
        })
    }

    /// Look at each item without changing it.
    pub fn inspect<F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<T>
    where
        F: Fn(&T) + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), None, move |t| {
            f(&t);
            Out::One(t)
        })
    }

    /// Set the key that per-key ordering and keyed windows group by.
    pub fn key_by<F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<T>
    where
        F: Fn(&T) -> String + Send + Sync + 'static,
    {
        self.annotate(spec.into(), f, |meta, key| meta.key = Some(Arc::from(key)))
    }

    /// Set each item's event time (windows on event time read it).
    pub fn event_time<F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<T>
    where
        F: Fn(&T) -> Timestamp + Send + Sync + 'static,
    {
        self.annotate(spec.into(), f, |meta, at| meta.event_time = Some(at))
    }

    /// A stage that passes each item on unchanged, with one field of its metadata set from
    /// its value by `f`. A panic in `f` goes to the stage's error policy.
    fn annotate<V, F>(self, spec: StageSpec, f: F, set: fn(&mut Meta, V)) -> Flow<T>
    where
        V: 'static,
        F: Fn(&T) -> V + Send + Sync + 'static,
    {
        let st = self.ctx.stage(spec);
        let stream = self.stream.filter_map(move |step| {
            let out = match step {
                Ok(mut item) => {
                    add(&st.counters.input, 1);
                    let value = st
                        .span
                        .in_scope(|| catch_unwind(AssertUnwindSafe(|| f(&item.value))));
                    match value {
                        Ok(value) => {
                            add(&st.counters.output, 1);
                            set(&mut item.meta, value);
                            Some(Ok(item))
                        }
                        Err(panic) => {
                            let error = panic_error(&st.name, panic);
                            return Either::Right(Box::pin(give_up(
                                st.clone(),
                                item.meta,
                                error,
                                1,
                            )));
                        }
                    }
                }
                Err(e) => Some(Err(e)),
            };
            Either::Left(ready(out))
        });
        Flow {
            stream: stream.boxed(),
            ctx: self.ctx,
        }
    }

    /// Turn each item into any number of items; zero acks the input, many settle it once
    /// every one of them is finished.
    pub fn flat_map<U, I, F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        I: IntoIterator<Item = U>,
        F: Fn(T) -> I + Send + Sync + 'static,
    {
        let st = self.ctx.stage(spec.into());
        let stream = self
            .stream
            .then(move |step| {
                let st = st.clone();
                let item = match step {
                    Ok(item) => item,
                    Err(e) => return Either::Left(ready(vec![Err(e)])),
                };
                add(&st.counters.input, 1);
                let Item { value, meta } = item;
                let outputs = st
                    .span
                    .in_scope(|| catch_unwind(AssertUnwindSafe(|| f(value).into_iter().collect())));
                match outputs {
                    Ok(outputs) => {
                        let outputs: Vec<U> = outputs;
                        if outputs.is_empty() {
                            add(&st.counters.filtered, 1);
                            add(&st.pipeline.filtered, meta.tokens.len() as u64);
                            meta.tokens.done_deferred(&st.shared);
                            return Either::Left(ready(Vec::new()));
                        }
                        add(&st.counters.output, outputs.len() as u64);
                        let n = outputs.len();
                        let mut meta = Some(meta);
                        let items = outputs
                            .into_iter()
                            .enumerate()
                            .filter_map(|(i, value)| {
                                let m = if i + 1 == n {
                                    meta.take()?
                                } else {
                                    meta.as_mut()?.fork()
                                };
                                Some(Ok(Item { value, meta: m }))
                            })
                            .collect();
                        Either::Left(ready(items))
                    }
                    Err(panic) => {
                        let error = panic_error(&st.name, panic);
                        Either::Right(give_up(st, meta, error, 1).map(|r| r.into_iter().collect()))
                    }
                }
            })
            .flat_map(stream::iter);
        Flow {
            stream: stream.boxed(),
            ctx: self.ctx,
        }
    }

    /// An async stage: up to the stage's concurrency items at once, ordered as the pipeline's
    /// [`Ordering`] says. Errors and panics go to the stage's error policy; a retry calls `f`
    /// again on a clone of the same item.
    pub fn then<U, F, Fut>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        T: Clone,
        U: Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, Error>> + Send + 'static,
    {
        let st = self.ctx.stage(spec.into());
        let f = Arc::new(f);
        let concurrency = st.concurrency;
        let ordering = self.ctx.ordering;
        let make = move |item: Item<T>| run_async(st.clone(), f.clone(), item).boxed();
        let stream = Concurrent::new(
            self.stream,
            Box::new(make),
            concurrency,
            self.ctx.max_in_flight,
            ordering,
        );
        Flow {
            stream: stream.boxed(),
            ctx: self.ctx,
        }
    }

    /// Encode each item as a JSON message (the item's key becomes the message key).
    pub fn encode(self, spec: impl Into<StageSpec>) -> Flow<Message>
    where
        T: Serialize,
    {
        let st = self.ctx.stage(spec.into());
        let stream = self.stream.filter_map(move |step| {
            let item = match step {
                Ok(item) => item,
                Err(e) => return Either::Left(ready(Some(Err(e)))),
            };
            add(&st.counters.input, 1);
            let encoded = mailroom_core::json::builder(&item.value).and_then(|b| {
                let b = match &item.meta.key {
                    Some(k) => b.key(&**k),
                    None => b,
                };
                match item.meta.event_time {
                    Some(t) => b.timestamp(t),
                    None => b,
                }
                .build()
            });
            match encoded {
                Ok(message) => {
                    add(&st.counters.output, 1);
                    Either::Left(ready(Some(Ok(Item {
                        value: message,
                        meta: item.meta,
                    }))))
                }
                Err(error) => Either::Right(Box::pin(give_up(st.clone(), item.meta, error, 1))),
            }
        });
        Flow {
            stream: stream.boxed(),
            ctx: self.ctx,
        }
    }
}

impl<T: Clone + Send + 'static> Flow<T> {
    /// A fallible change: errors (and panics) go to the stage's error policy; a retry calls
    /// `f` again on a clone of the same item.
    pub fn try_map<U, F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> Result<U, Error> + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), Some(T::clone), move |t| match f(t) {
            Ok(u) => Out::One(u),
            Err(e) => Out::Failed(e),
        })
    }

    /// A fallible change that may also filter (`Ok(None)`).
    pub fn try_filter_map<U, F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> Result<Option<U>, Error> + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), Some(T::clone), move |t| match f(t) {
            Ok(Some(u)) => Out::One(u),
            Ok(None) => Out::Filtered,
            Err(e) => Out::Failed(e),
        })
    }
}

impl Flow<Message> {
    /// Decode each message's JSON payload into `D`; failures go to the stage's error policy
    /// (typically [`ErrorPolicy::DeadLetter`](crate::ErrorPolicy::DeadLetter)).
    pub fn decode<D>(self, spec: impl Into<StageSpec>) -> Flow<D>
    where
        D: DeserializeOwned + Send + 'static,
    {
        self.try_map(spec, |m: Message| mailroom_core::json::decode::<D>(&m))
    }
}

/// Call a stage function, turning a panic into a failure.
#[inline(always)]
fn call<T, U, F>(st: &StageRt, f: &F, value: T) -> Out<U>
where
    F: Fn(T) -> Out<U>,
{
    let _entered = st.span.enter();
    match catch_unwind(AssertUnwindSafe(|| f(value))) {
        Ok(out) => out,
        Err(panic) => Out::Failed(panic_error(&st.name, panic)),
    }
}

/// A failed synchronous stage: retry as the policy says, then give up.
async fn recover<T, U, F>(
    st: Arc<StageRt>,
    f: Arc<F>,
    meta: Meta,
    mut kept: Option<T>,
    retry_clone: Option<fn(&T) -> T>,
    mut error: Error,
) -> Option<Step<U>>
where
    F: Fn(T) -> Out<U>,
{
    let mut attempt = 1;
    loop {
        let Some(delay) = st.retry_delay(&error, attempt) else {
            return give_up(st, meta, error, attempt).await;
        };
        let Some(value) = kept.take() else {
            return give_up(st, meta, error, attempt).await;
        };
        tokio::time::sleep(delay).await;
        attempt += 1;
        kept = retry_clone.map(|c| c(&value));
        match call(&st, &*f, value) {
            Out::One(u) => {
                add(&st.counters.output, 1);
                return Some(Ok(Item { value: u, meta }));
            }
            Out::Filtered => {
                add(&st.counters.filtered, 1);
                add(&st.pipeline.filtered, meta.tokens.len() as u64);
                meta.tokens.done().await;
                return None;
            }
            Out::Failed(e) => error = e,
        }
    }
}

/// Apply the stage's terminal policy: `Some(Err)` fails the pipeline, `None` drops the item.
pub(crate) async fn give_up<U>(
    st: Arc<StageRt>,
    meta: Meta,
    error: Error,
    attempts: u32,
) -> Option<Step<U>> {
    st.give_up(meta.tokens, error, attempts).await.map(Err)
}

/// One item through an async stage, with retries and panic catching.
async fn run_async<T, U, F, Fut>(st: Arc<StageRt>, f: Arc<F>, item: Item<T>) -> Option<Step<U>>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<U, Error>>,
{
    use tracing::Instrument;
    add(&st.counters.input, 1);
    let Item { value, meta } = item;
    let (arg, kept) = if st.policy.backoff().is_some() {
        (value.clone(), Some(value))
    } else {
        (value, None)
    };
    let called = catch_unwind(AssertUnwindSafe(|| f(arg)));
    let result = match called {
        Ok(fut) => AssertUnwindSafe(fut.instrument(st.span.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panic_error(&st.name, panic))),
        Err(panic) => Err(panic_error(&st.name, panic)),
    };
    let error = match result {
        Ok(u) => {
            add(&st.counters.output, 1);
            return Some(Ok(Item { value: u, meta }));
        }
        Err(e) => e,
    };
    match (st.retry_delay(&error, 1), kept) {
        (Some(delay), Some(value)) => {
            tokio::time::sleep(delay).await;
            retry_async(st, f, value, meta, 2).await
        }
        _ => give_up(st, meta, error, 1).await,
    }
}

/// Further attempts of an async stage (the first attempt moved nothing out of `value`).
async fn retry_async<T, U, F, Fut>(
    st: Arc<StageRt>,
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
            Ok(fut) => AssertUnwindSafe(fut.instrument(st.span.clone()))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panic_error(&st.name, panic))),
            Err(panic) => Err(panic_error(&st.name, panic)),
        };
        match result {
            Ok(u) => {
                add(&st.counters.output, 1);
                return Some(Ok(Item { value: u, meta }));
            }
            Err(error) => match st.retry_delay(&error, attempt) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return give_up(st, meta, error, attempt).await,
            },
        }
    }
}
