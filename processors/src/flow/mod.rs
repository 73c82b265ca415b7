//! The typed pipeline under construction: a [`Flow`] is the stream of items between two
//! stages, and each stage method consumes one flow and returns the next.
//!
//! One job per file:
//! - `builder`: a pipeline's settings and sources ([`Pipeline::builder`] up to [`PipelineBuilder::flow`]);
//! - `parts`: what every flow of one pipeline shares while it is built and run;
//! - `source`: one source polled as a stream, taking an in-flight slot per delivery;
//! - `stages`: the stage methods on [`Flow`] (map, filter, then, encode, ...);
//! - `sync_stage`: how a synchronous stage runs inside the poll that received its item;
//! - `async_stage`: how one item goes through an async stage, with retries.
//!
//! The stages that need more room have files of their own at the crate root: batches
//! (`batch`), windows (`window`), repartitioning (`repartition`) and the sinks that end a flow
//! (`sink`).

use std::sync::Arc;

use futures_util::stream::BoxStream;
use mailroom_core::trace_context::TraceContext;
use mailroom_core::{Error, Timestamp};

use crate::stage::RunningStage;
use crate::token::Tokens;

mod async_stage;
mod builder;
mod parts;
mod source;
mod stages;
mod sync_stage;

pub use builder::{Ordering, Partitioning, Pipeline, PipelineBuilder, Source};
pub(crate) use parts::{PipelineParts, StoppedSources};

/// Where an item came from and what it must settle.
pub(crate) struct Meta {
    /// The settle tokens of every input this item was made from.
    pub tokens: Tokens,
    /// What per-key ordering and keyed windows group by: the message key, or what `key_by` set.
    pub key: Option<Arc<str>>,
    /// The source and partition the item came from (`source index << 32 ^ partition`), which
    /// per-partition ordering follows and a window pane's result keeps.
    pub lane: u64,
    /// The message timestamp, or what `event_time` set; event-time windows read it.
    pub event_time: Option<Timestamp>,
    /// The W3C trace context the input carried (the first input's, for an item made of
    /// several), which the sink gives the output so that it continues the input's trace.
    /// Boxed and `None` for untraced inputs, so an item stays small on the common path.
    pub trace: Option<Box<TraceContext>>,
}

impl Meta {
    /// The metadata of another item made from the same inputs (a share of each token).
    pub fn fork(&mut self) -> Meta {
        Meta {
            tokens: self.tokens.fork(),
            key: self.key.clone(),
            lane: self.lane,
            event_time: self.event_time,
            trace: self.trace.clone(),
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
    pub(crate) parts: PipelineParts,
}

/// Apply the stage's terminal policy: `Some(Err)` fails the pipeline, `None` drops the item.
pub(crate) async fn give_up<U>(
    stage: Arc<RunningStage>,
    meta: Meta,
    error: Error,
    attempts: u32,
) -> Option<Step<U>> {
    stage.give_up(meta.tokens, error, attempts).await.map(Err)
}
