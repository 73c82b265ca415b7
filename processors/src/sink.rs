//! The end of a pipeline: send each message to one sink, to every sink, or to the sink a
//! function picks; settle inputs once their outputs are confirmed.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use mailroom_core::{Destination, Error, ErrorKind, Message, PendingConfirm, Producer};

use crate::flow::{Flow, Item, Meta, Pipeline, Step};
use crate::metrics::{add, bump};
use crate::policy::{Backoff, ErrorPolicy};
use crate::stage::{stage, RunningStage, StageSpec};
use crate::token::Tokens;

/// A producer and the destination it sends to: a pipeline's sink, dead-letter or side output.
#[derive(Clone)]
pub struct Sink {
    pub(crate) producer: Arc<dyn Producer>,
    pub(crate) destination: Destination,
}

impl Sink {
    /// Send to `destination` through `producer`.
    pub fn new(producer: Arc<dyn Producer>, destination: Destination) -> Self {
        Sink {
            producer,
            destination,
        }
    }

    /// The destination.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sink({})", self.destination)
    }
}

type RouteFn = Arc<dyn Fn(&Message) -> Option<usize> + Send + Sync>;

/// Which sinks a message goes to.
#[derive(Clone)]
pub(crate) enum Router {
    All,
    By(RouteFn),
}

/// The default policy of a sink stage: retry temporary send failures a few times, then fail
/// the pipeline (every unsettled input is then redelivered). A retried message lands after
/// those sent while it waited: see the crate docs on ordering.
pub fn default_sink_policy() -> ErrorPolicy {
    ErrorPolicy::retry(Backoff::exponential(Duration::from_millis(100), 4))
}

pub(crate) fn sink_stage(name: &str) -> StageSpec {
    stage(name).on_error(default_sink_policy())
}

type Confirms = FuturesUnordered<BoxFuture<'static, Option<Error>>>;

impl Flow<Message> {
    /// Send every message to `sink`.
    pub fn to(self, sink: Sink) -> Result<Pipeline, Error> {
        self.deliver(sink_stage("sink"), vec![sink], Router::All)
    }

    /// Send every message to `sink`, with this stage name and error policy.
    pub fn to_with(self, spec: impl Into<StageSpec>, sink: Sink) -> Result<Pipeline, Error> {
        self.deliver(spec.into(), vec![sink], Router::All)
    }

    /// Send every message to each of `sinks`; an input is settled once all of them confirmed.
    pub fn fan_out(self, spec: impl Into<StageSpec>, sinks: Vec<Sink>) -> Result<Pipeline, Error> {
        self.deliver(spec.into(), sinks, Router::All)
    }

    /// Send each message to the sink `route` picks by index into `sinks`; `None` filters it
    /// out (its input is acked). An index out of range fails the pipeline.
    pub fn route<F>(
        self,
        spec: impl Into<StageSpec>,
        sinks: Vec<Sink>,
        route: F,
    ) -> Result<Pipeline, Error>
    where
        F: Fn(&Message) -> Option<usize> + Send + Sync + 'static,
    {
        self.deliver(spec.into(), sinks, Router::By(Arc::new(route)))
    }

    fn deliver(
        self,
        spec: StageSpec,
        mut sinks: Vec<Sink>,
        router: Router,
    ) -> Result<Pipeline, Error> {
        let Flow { stream, mut parts } = self;
        if sinks.is_empty() {
            parts
                .errors
                .push(Error::config("a pipeline needs at least one sink"));
        }
        if let Some(error) = parts.errors.drain(..).next() {
            return Err(error);
        }
        let stage = parts.stage(spec);
        let drive = match (sinks.len(), &router) {
            (1, Router::All) => drive_one(stream, stage, sinks.remove(0)).boxed(),
            _ => drive_routed(stream, stage, sinks, router).boxed(),
        };
        Ok(Pipeline { parts, drive })
    }
}

impl Flow<Vec<Message>> {
    /// Send each batch to `sink` with one `send_batch` call; its inputs are settled once every
    /// message of the batch is confirmed.
    pub fn to_batched(self, sink: Sink) -> Result<Pipeline, Error> {
        let Flow { stream, mut parts } = self;
        if let Some(error) = parts.errors.drain(..).next() {
            return Err(error);
        }
        let stage = parts.stage(sink_stage("batch-sink"));
        let drive = drive_batches(stream, stage, sink).boxed();
        Ok(Pipeline { parts, drive })
    }
}

/// Every message to each sink, or to the one the router picks: one send per message and sink,
/// each input settled once every output made from it is confirmed.
pub(crate) async fn drive_routed(
    mut stream: BoxStream<'static, Step<Message>>,
    stage: Arc<RunningStage>,
    sinks: Vec<Sink>,
    router: Router,
) -> Result<(), Error> {
    let mut confirms = Confirms::new();
    let mut pacer = Pacer::new();
    loop {
        // The next item, collecting finished confirms first (a failed one stops the
        // pipeline) and while waiting for it.
        let next = std::future::poll_fn(|cx| {
            while !confirms.is_empty() {
                match confirms.poll_next_unpin(cx) {
                    Poll::Ready(Some(Some(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(None)) => {}
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            stream.poll_next_unpin(cx)
        })
        .await;
        match next {
            Some(Ok(item)) => dispatch(&stage, &sinks, &router, item, &mut confirms).await?,
            Some(Err(e)) => return Err(e),
            None => break,
        }
        pacer.passed(1).await;
    }
    while let Some(failed) = confirms.next().await {
        if let Some(e) = failed {
            return Err(e);
        }
    }
    for sink in &sinks {
        sink.producer.flush().await?;
    }
    Ok(())
}

/// Lets the pipeline's other tasks run now and then.
///
/// A source that always has a message ready and a sink that always confirms at once never make
/// the sink's task wait, so the settler and the shutdown signal would starve. By time, not by
/// count: a yield can move the task to another worker, whose cold caches cost far more than the
/// yield, so yielding every thousand fast items costs about a tenth of the throughput
/// (measured), every few milliseconds nothing visible.
struct Pacer {
    since_check: u32,
    last_yield: std::time::Instant,
}

impl Pacer {
    /// How many items pass between looks at the clock.
    const CHECK_EVERY: u32 = 256;
    /// How long the sink works without waiting before it lets other tasks run.
    const YIELD_AFTER: Duration = Duration::from_millis(5);

    fn new() -> Self {
        Pacer {
            since_check: 0,
            last_yield: std::time::Instant::now(),
        }
    }

    /// `items` more went through: yield if it has been a while.
    async fn passed(&mut self, items: u32) {
        self.since_check += items;
        if self.since_check >= Self::CHECK_EVERY {
            self.since_check = 0;
            if self.last_yield.elapsed() >= Self::YIELD_AFTER {
                tokio::task::yield_now().await;
                self.last_yield = std::time::Instant::now();
            }
        }
    }
}

/// Most messages handed to a sink in one `enqueue_batch`.
const SINK_BATCH: usize = 64;

/// The common shape, every message to one sink: whatever the stages have ready (up to
/// [`SINK_BATCH`]) goes to the producer in one `enqueue_batch`, which costs a backend that
/// takes batches (one lock, one call) far less than a call per message. Nothing waits to fill
/// a batch: it holds only what was already there, so latency does not grow.
pub(crate) async fn drive_one(
    mut stream: BoxStream<'static, Step<Message>>,
    stage: Arc<RunningStage>,
    sink: Sink,
) -> Result<(), Error> {
    let mut confirms = Confirms::new();
    let mut pacer = Pacer::new();
    // Reused from batch to batch: nothing is allocated per batch.
    let mut values = Vec::with_capacity(SINK_BATCH);
    let mut tokens = Vec::with_capacity(SINK_BATCH);
    let mut pending = Vec::with_capacity(SINK_BATCH);
    // Set when the stream ended (`None`) or failed (`Some`): what was gathered before it is
    // still sent.
    let mut end: Option<Option<Error>> = None;
    while end.is_none() {
        // Finished confirms first (a failed one stops the pipeline), then every ready item.
        let polled = std::future::poll_fn(|cx| {
            while !confirms.is_empty() {
                match confirms.poll_next_unpin(cx) {
                    Poll::Ready(Some(Some(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(Some(None)) => {}
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            while values.len() < SINK_BATCH {
                match stream.poll_next_unpin(cx) {
                    // Only the fields used are moved out of the item (it is a few hundred
                    // bytes; a whole copy per message is measurable).
                    Poll::Ready(Some(Ok(Item {
                        value,
                        meta: Meta { tokens: t, .. },
                    }))) => {
                        values.push(value);
                        tokens.push(t);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        end = Some(Some(e));
                        break;
                    }
                    Poll::Ready(None) => {
                        end = Some(None);
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if values.is_empty() && end.is_none() {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        })
        .await;
        polled?;
        let n = values.len();
        if n == 0 {
            break;
        }
        add(&stage.counters.input, n as u64);
        if n == 1 {
            let Some(value) = values.pop() else { break };
            pending.push(sink.producer.enqueue(&sink.destination, value).await);
        } else {
            sink.producer
                .enqueue_batch(&sink.destination, &mut values, &mut pending)
                .await;
        }
        if pending.len() != n {
            // Results can no longer be matched to inputs, so none is acked: settling by
            // position could ack an input whose output was never sent. The inputs are
            // released for redelivery (duplicates of what was sent, no loss), and the
            // pipeline stops, since a producer that breaks the batch contract once may
            // break it on every batch.
            add(&stage.counters.errors, n as u64);
            let answered = pending.len();
            pending.clear();
            tokens.clear();
            return Err(Error::new(
                ErrorKind::Broker,
                format!(
                    "sink '{}': the producer answered for {answered} of the {n} messages it \
                     was given; the batch's inputs are released for redelivery",
                    stage.name
                ),
            ));
        }
        for (enqueued, t) in pending.drain(..).zip(tokens.drain(..)) {
            if let Some(t) = enqueued_now(&stage, &sink, enqueued, t, &mut confirms) {
                count_output(&stage);
                // Settled in place, without a future per layer: the usual single input.
                match t.single() {
                    Ok(Some(job)) => job.run().await,
                    Ok(None) => {}
                    Err(many) => many.done().await,
                }
            }
        }
        values.clear();
        pacer.passed(n as u32).await;
    }
    if let Some(Some(e)) = end {
        return Err(e);
    }
    while let Some(failed) = confirms.next().await {
        if let Some(e) = failed {
            return Err(e);
        }
    }
    sink.producer.flush().await
}

/// After an enqueue: settle now when the confirm is already there, else track it.
async fn settle_enqueued(
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

async fn dispatch(
    stage: &Arc<RunningStage>,
    sinks: &[Sink],
    router: &Router,
    item: Item<Message>,
    confirms: &mut Confirms,
) -> Result<(), Error> {
    add(&stage.counters.input, 1);
    let Item { value, meta } = item;
    match router {
        Router::All if sinks.len() == 1 => {
            send(stage, &sinks[0], value, meta.tokens, confirms).await;
        }
        Router::All => {
            let last = sinks.len() - 1;
            let mut tokens = Some(meta.tokens);
            for (i, sink) in sinks.iter().enumerate() {
                let t = if i == last {
                    tokens.take()
                } else {
                    tokens.as_mut().map(Tokens::fork)
                };
                if let Some(t) = t {
                    send(stage, sink, value.clone(), t, confirms).await;
                }
            }
        }
        Router::By(route) => {
            let _entered = stage.span.enter();
            let picked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(&value)));
            drop(_entered);
            match picked {
                Ok(Some(i)) if i < sinks.len() => {
                    send(stage, &sinks[i], value, meta.tokens, confirms).await;
                }
                Ok(Some(i)) => {
                    return Err(Error::config(format!(
                        "stage '{}': the router picked sink {i}, but there are only {}",
                        stage.name,
                        sinks.len()
                    )));
                }
                Ok(None) => {
                    add(&stage.counters.filtered, 1);
                    add(&stage.pipeline.filtered, meta.tokens.len() as u64);
                    meta.tokens.done().await;
                }
                Err(panic) => {
                    let error = crate::stage::panic_error(&stage.name, panic);
                    if let Some(e) = stage.give_up(meta.tokens, error, 1).await {
                        return Err(e);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Enqueue one message; settle its tokens now when the confirm is already known, else when it
/// arrives (tracked in `confirms`).
///
/// No copy of the message is kept for a retry: a producer hands an unconfirmed message back
/// inside the error (the `Producer` contract, `Error::undelivered`), and a failure that does not
/// return it is given up to the stage's policy (the input is then redelivered or dead-lettered,
/// never lost).
async fn send(
    stage: &Arc<RunningStage>,
    sink: &Sink,
    message: Message,
    tokens: Tokens,
    confirms: &mut Confirms,
) {
    let enqueued = sink.producer.enqueue(&sink.destination, message).await;
    settle_enqueued(stage, sink, enqueued, tokens, confirms).await;
}

/// After an enqueue: the tokens back when the confirm is already there (the caller settles
/// them, awaiting the settle in place: usually it completes at once), else the confirm is
/// tracked in `confirms`.
#[must_use]
#[inline(always)]
fn enqueued_now(
    stage: &Arc<RunningStage>,
    sink: &Sink,
    enqueued: Result<PendingConfirm, Error>,
    tokens: Tokens,
    confirms: &mut Confirms,
) -> Option<Tokens> {
    match enqueued {
        Ok(mut pending) => match pending.take_if_ready() {
            Some(Ok(_)) => return Some(tokens),
            Some(Err(e)) => confirms.push(failed(stage.clone(), sink.clone(), tokens, e).boxed()),
            None => {
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
        },
        Err(e) => confirms.push(failed(stage.clone(), sink.clone(), tokens, e).boxed()),
    }
    None
}

async fn confirmed(stage: &RunningStage, tokens: Tokens) {
    count_output(stage);
    match tokens.single() {
        Ok(Some(job)) => job.run().await,
        Ok(None) => {}
        Err(many) => many.done().await,
    }
}

/// One more message confirmed by a sink.
#[inline(always)]
fn count_output(stage: &RunningStage) {
    bump(&stage.counters.output, 1);
    bump(&stage.pipeline.out, 1);
}

/// A send failed: retry it as the policy says, then give up.
async fn failed(
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

/// Each batch to one sink in one `send_batch`, retried as the stage's policy says.
async fn drive_batches(
    mut stream: BoxStream<'static, Step<Vec<Message>>>,
    stage: Arc<RunningStage>,
    sink: Sink,
) -> Result<(), Error> {
    while let Some(step) = stream.next().await {
        let Item { value, meta } = step?;
        add(&stage.counters.input, 1);
        let mut pending = value;
        let mut attempt = 1;
        loop {
            let kept = stage.policy.backoff().map(|_| pending.clone());
            let count = pending.len() as u64;
            let results = sink
                .producer
                .send_batch(&sink.destination, pending)
                .await
                .map(|results| results.into_iter().collect::<Vec<_>>());
            let mut retry = Vec::new();
            let mut error = None;
            match results {
                Ok(results) if results.len() as u64 != count => {
                    // As in `drive_one`: results that cannot be matched to messages settle
                    // nothing. Dropping the tokens releases the batch's inputs.
                    add(&stage.counters.errors, count);
                    drop(meta);
                    return Err(Error::new(
                        ErrorKind::Broker,
                        format!(
                            "sink '{}': the producer answered for {} of the {count} messages \
                             of a batch; the batch's inputs are released for redelivery",
                            stage.name,
                            results.len()
                        ),
                    ));
                }
                Ok(results) => {
                    for (i, r) in results.into_iter().enumerate() {
                        if let Err(e) = r {
                            if let Some(m) = kept.as_ref().and_then(|k| k.get(i)) {
                                retry.push(m.clone());
                            }
                            error.get_or_insert(e);
                        }
                    }
                }
                Err(e) => {
                    retry = kept.clone().unwrap_or_default();
                    error = Some(e);
                }
            }
            let Some(e) = error else {
                add(&stage.counters.output, 1);
                add(&stage.pipeline.out, count);
                meta.tokens.done().await;
                break;
            };
            match stage.retry_delay(&e, attempt) {
                Some(delay) if !retry.is_empty() => {
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    pending = retry;
                }
                _ => {
                    if let Some(e) = stage.give_up(meta.tokens, e, attempt).await {
                        return Err(e);
                    }
                    break;
                }
            }
        }
    }
    sink.producer.flush().await
}
