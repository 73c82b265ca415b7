//! Batching by count, bytes and time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use futures_util::Stream;
use mailroom_core::Message;
use tokio::time::Sleep;

use crate::flow::{Flow, Item, Meta, Step};
use crate::metrics::add;
use crate::stage::{RunningStage, StageSpec};
use crate::token::Tokens;

/// How big an item is, for batches bounded by bytes.
pub trait ByteSize {
    /// The item's size in bytes (roughly what it costs to send).
    fn byte_size(&self) -> usize;
}

impl ByteSize for Message {
    fn byte_size(&self) -> usize {
        self.encoded_len()
    }
}

impl ByteSize for String {
    fn byte_size(&self) -> usize {
        self.len()
    }
}

impl ByteSize for Vec<u8> {
    fn byte_size(&self) -> usize {
        self.len()
    }
}

impl ByteSize for bytes::Bytes {
    fn byte_size(&self) -> usize {
        self.len()
    }
}

/// When a batch is complete: whichever of its bounds is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    max_count: usize,
    max_bytes: Option<usize>,
    max_wait: Option<Duration>,
}

impl Batch {
    /// Batches of at most `n` items (at least 1).
    pub fn count(n: usize) -> Self {
        Batch {
            max_count: n.max(1),
            max_bytes: None,
            max_wait: None,
        }
    }

    /// Close a batch once it holds at least this many bytes.
    pub fn bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = Some(max_bytes.max(1));
        self
    }

    /// Close a batch this long after its first item arrived, however small it is.
    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }
}

impl<T: ByteSize + Send + 'static> Flow<T> {
    /// Group items into batches; a batch's inputs are settled when the batch is. A shutdown
    /// flushes the open batch, and so does a pipeline holding `max_in_flight` inputs (no more
    /// could arrive to fill it).
    pub fn batch(self, spec: impl Into<StageSpec>, batch: Batch) -> Flow<Vec<T>> {
        let stage = self.parts.stage(spec.into());
        let stream = Batcher {
            upstream: self.stream,
            done: false,
            values: Vec::new(),
            metas: Vec::new(),
            bytes: 0,
            deadline: None,
            batch,
            stage,
        };
        Flow {
            stream: stream.boxed(),
            parts: self.parts,
        }
    }
}

struct Batcher<T> {
    upstream: BoxStream<'static, Step<T>>,
    done: bool,
    values: Vec<T>,
    metas: Vec<Meta>,
    bytes: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    batch: Batch,
    stage: Arc<RunningStage>,
}

impl<T> Batcher<T> {
    fn emit(&mut self) -> Step<Vec<T>> {
        self.deadline = None;
        self.bytes = 0;
        let values = std::mem::take(&mut self.values);
        let metas = std::mem::take(&mut self.metas);
        add(&self.stage.counters.output, 1);
        Ok(Item {
            value: values,
            meta: merge(metas),
        })
    }
}

/// The metadata of items combined into one: every token, the common key, the latest time.
pub(crate) fn merge(metas: Vec<Meta>) -> Meta {
    let mut tokens = Vec::with_capacity(metas.len());
    let mut key: Option<Option<Arc<str>>> = None;
    let mut lane = 0;
    let mut event_time = None;
    let mut trace = None;
    for (i, m) in metas.into_iter().enumerate() {
        if i == 0 {
            lane = m.lane;
        }
        key = match key {
            None => Some(m.key),
            Some(k) if k == m.key => Some(k),
            Some(_) => Some(None),
        };
        event_time = event_time.max(m.event_time);
        trace = trace.or(m.trace);
        tokens.extend(m.tokens.into_vec());
    }
    Meta {
        tokens: Tokens::Many(tokens),
        key: key.flatten(),
        lane,
        event_time,
        trace,
    }
}

impl<T: ByteSize> Stream for Batcher<T> {
    type Item = Step<Vec<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return if this.values.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(this.emit()))
                };
            }
            match this.upstream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    add(&this.stage.counters.input, 1);
                    if this.values.is_empty() {
                        this.deadline =
                            this.batch.max_wait.map(|d| Box::pin(tokio::time::sleep(d)));
                    }
                    this.bytes += item.value.byte_size();
                    this.values.push(item.value);
                    this.metas.push(item.meta);
                    let full = this.values.len() >= this.batch.max_count
                        || this.batch.max_bytes.is_some_and(|max| this.bytes >= max);
                    if full {
                        return Poll::Ready(Some(this.emit()));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    if let Some(deadline) = this.deadline.as_mut() {
                        if deadline.as_mut().poll(cx).is_ready() && !this.values.is_empty() {
                            return Poll::Ready(Some(this.emit()));
                        }
                    }
                    // With every slot held, no input arrives until one is settled, and the
                    // inputs of this batch are settled only once it goes out: waiting to
                    // fill it would stall the pipeline (a bound above `max_in_flight`, or
                    // other stages holding slots). A slot is taken before its item is
                    // passed on, so the last item in is seen before this check.
                    if !this.values.is_empty() && this.stage.in_flight.slots.all_held() {
                        return Poll::Ready(Some(this.emit()));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

// No field is ever pinned structurally (the deadline is boxed), so moving the batcher is sound.
impl<T> Unpin for Batcher<T> {}
