//! The stage methods of a [`Flow`]: each consumes the flow and returns one of the stage's
//! output type (map, filter, key and event time, flat_map, async `then`, JSON encode and
//! decode).

use std::future::{ready, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures_util::future::Either;
use futures_util::stream::{self, StreamExt};
use futures_util::FutureExt;
use mailroom_core::{Error, Message, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::async_stage::run_async;
use super::sync_stage::{MapStream, SyncOutput, SyncStream};
use super::{give_up, Flow, Item, Meta};
use crate::concurrent::Concurrent;
use crate::metrics::{add, Metrics};
use crate::stage::{panic_error, StageSpec};

impl<T: Send + 'static> Flow<T> {
    /// The pipeline's live counters (also available from the built pipeline).
    pub fn metrics(&self) -> Metrics {
        self.parts.metrics.clone()
    }

    /// Apply a synchronous stage that emits zero or one item per input.
    fn sync_stage<U, F>(self, spec: StageSpec, retry_clone: Option<fn(&T) -> T>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> SyncOutput<U> + Send + Sync + 'static,
    {
        let stage = self.parts.stage(spec);
        let f = Arc::new(f);
        let retry_clone = retry_clone.filter(|_| stage.policy.backoff().is_some());
        Flow {
            stream: SyncStream {
                upstream: self.stream,
                stage,
                f,
                retry_clone,
                recovering: None,
            }
            .boxed(),
            parts: self.parts,
        }
    }

    /// Change each item.
    pub fn map<U, F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        let stage = self.parts.stage(spec.into());
        Flow {
            stream: MapStream {
                upstream: self.stream,
                stage,
                f,
                recovering: None,
            }
            .boxed(),
            parts: self.parts,
        }
    }

    /// Keep the items `f` accepts; the inputs of the others are acked.
    pub fn filter<F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<T>
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), None, move |t| {
            if f(&t) {
                SyncOutput::One(t)
            } else {
                SyncOutput::Filtered
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
            Some(u) => SyncOutput::One(u),
            None => SyncOutput::Filtered,
        })
    }

    /// Look at each item without changing it.
    pub fn inspect<F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<T>
    where
        F: Fn(&T) + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), None, move |t| {
            f(&t);
            SyncOutput::One(t)
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
        let stage = self.parts.stage(spec);
        let stream = self.stream.filter_map(move |step| {
            let out = match step {
                Ok(mut item) => {
                    add(&stage.counters.input, 1);
                    let value = stage
                        .span
                        .in_scope(|| catch_unwind(AssertUnwindSafe(|| f(&item.value))));
                    match value {
                        Ok(value) => {
                            add(&stage.counters.output, 1);
                            set(&mut item.meta, value);
                            Some(Ok(item))
                        }
                        Err(panic) => {
                            let error = panic_error(&stage.name, panic);
                            return Either::Right(Box::pin(give_up(
                                stage.clone(),
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
            parts: self.parts,
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
        let stage = self.parts.stage(spec.into());
        let stream = self
            .stream
            .then(move |step| {
                let stage = stage.clone();
                let item = match step {
                    Ok(item) => item,
                    Err(e) => return Either::Left(ready(vec![Err(e)])),
                };
                add(&stage.counters.input, 1);
                let Item { value, meta } = item;
                let outputs = stage
                    .span
                    .in_scope(|| catch_unwind(AssertUnwindSafe(|| f(value).into_iter().collect())));
                match outputs {
                    Ok(outputs) => {
                        let outputs: Vec<U> = outputs;
                        if outputs.is_empty() {
                            add(&stage.counters.filtered, 1);
                            add(&stage.pipeline.filtered, meta.tokens.len() as u64);
                            meta.tokens.done_deferred(&stage.in_flight);
                            return Either::Left(ready(Vec::new()));
                        }
                        add(&stage.counters.output, outputs.len() as u64);
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
                        let error = panic_error(&stage.name, panic);
                        Either::Right(
                            give_up(stage, meta, error, 1).map(|r| r.into_iter().collect()),
                        )
                    }
                }
            })
            .flat_map(stream::iter);
        Flow {
            stream: stream.boxed(),
            parts: self.parts,
        }
    }

    /// An async stage: up to the stage's concurrency items at once, ordered as the pipeline's
    /// [`Ordering`](crate::Ordering) says. Errors and panics go to the stage's error policy; a retry calls `f`
    /// again on a clone of the same item.
    pub fn then<U, F, Fut>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        T: Clone,
        U: Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, Error>> + Send + 'static,
    {
        let stage = self.parts.stage(spec.into());
        let f = Arc::new(f);
        let concurrency = stage.concurrency;
        let ordering = self.parts.ordering;
        let make = move |item: Item<T>| run_async(stage.clone(), f.clone(), item).boxed();
        let stream = Concurrent::new(
            self.stream,
            Box::new(make),
            concurrency,
            self.parts.max_in_flight,
            ordering,
        );
        Flow {
            stream: stream.boxed(),
            parts: self.parts,
        }
    }

    /// Encode each item as a JSON message (the item's key becomes the message key).
    pub fn encode(self, spec: impl Into<StageSpec>) -> Flow<Message>
    where
        T: Serialize,
    {
        let stage = self.parts.stage(spec.into());
        let stream = self.stream.filter_map(move |step| {
            let item = match step {
                Ok(item) => item,
                Err(e) => return Either::Left(ready(Some(Err(e)))),
            };
            add(&stage.counters.input, 1);
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
                    add(&stage.counters.output, 1);
                    Either::Left(ready(Some(Ok(Item {
                        value: message,
                        meta: item.meta,
                    }))))
                }
                Err(error) => Either::Right(Box::pin(give_up(stage.clone(), item.meta, error, 1))),
            }
        });
        Flow {
            stream: stream.boxed(),
            parts: self.parts,
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
            Ok(u) => SyncOutput::One(u),
            Err(e) => SyncOutput::Failed(e),
        })
    }

    /// A fallible change that may also filter (`Ok(None)`).
    pub fn try_filter_map<U, F>(self, spec: impl Into<StageSpec>, f: F) -> Flow<U>
    where
        U: Send + 'static,
        F: Fn(T) -> Result<Option<U>, Error> + Send + Sync + 'static,
    {
        self.sync_stage(spec.into(), Some(T::clone), move |t| match f(t) {
            Ok(Some(u)) => SyncOutput::One(u),
            Ok(None) => SyncOutput::Filtered,
            Err(e) => SyncOutput::Failed(e),
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
