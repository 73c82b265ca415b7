//! The end of a pipeline: send each message to one sink, to every sink, or to the sink a
//! function picks; settle inputs once their outputs are confirmed.
//!
//! One job per file: this one has the [`Sink`] type and the terminal methods of a [`Flow`];
//! `one` drives the common shape (every message to one sink, handed over one by one where the
//! producer takes it at once, else in batches),
//! `routed` fan-out and routing, `batches` a flow of batches; `confirm` settles an input once
//! its send is confirmed, or retries the send; `pacer` lets the pipeline's other tasks run.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use mailroom_core::trace_context::TraceContext;
use mailroom_core::{Destination, Error, Message, Producer};

use crate::flow::{Flow, Pipeline, Step};
use crate::policy::{Backoff, ErrorPolicy};
use crate::stage::{stage, StageSpec};

mod batches;
mod confirm;
mod one;
mod pacer;
mod routed;

pub(crate) use routed::drive_routed;

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
            // The single sink gives each output its input's trace where it takes the item
            // apart: a `map` layer here would be one more boxed poll and two whole-item copies
            // per message (measured with callgrind, see `one`).
            (1, Router::All) => one::drive_one(stream, stage, sinks.remove(0)).boxed(),
            _ => drive_routed(stream.map(carry_trace).boxed(), stage, sinks, router).boxed(),
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
        let stream = stream.map(carry_batch_trace).boxed();
        let drive = batches::drive_batches(stream, stage, sink).boxed();
        Ok(Pipeline { parts, drive })
    }
}

/// The input's trace goes on through its output: an output that carries no trace context of
/// its own (a new message, not the input passed on) gets a child of its input's, so its send,
/// and whoever consumes it, joins the input's trace. One it carries (the input's headers kept,
/// or set by the application) is left as it is.
fn carry_trace(step: Step<Message>) -> Step<Message> {
    step.map(|mut item| {
        if let Some(trace) = &item.meta.trace {
            give_trace(trace, &mut item.value);
        }
        item
    })
}

/// [`carry_trace`] for each message of a batch: all continue the batch's first input's trace.
fn carry_batch_trace(step: Step<Vec<Message>>) -> Step<Vec<Message>> {
    step.map(|mut item| {
        if let Some(trace) = &item.meta.trace {
            for message in &mut item.value {
                give_trace(trace, message);
            }
        }
        item
    })
}

pub(super) fn give_trace(trace: &TraceContext, message: &mut Message) {
    if TraceContext::extract(message.headers()).is_none() {
        trace.child().inject(message.headers_mut());
    }
}
