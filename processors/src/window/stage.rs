//! The window stage on a flow: [`Flow::window`] checks that keyed state is correct for the
//! pipeline, and the aggregate chosen on [`WindowedFlow`] builds the operator.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use mailroom_core::{Error, Timestamp};
use tokio::time::Instant;

use super::operator::WindowOp;
use super::{WindowProbe, WindowSpec, Windowed};
use crate::flow::Flow;
use crate::stage::StageSpec;

/// A window stage being configured: pick the aggregate next.
pub struct WindowedFlow<T> {
    flow: Flow<T>,
    spec: WindowSpec,
    stage: StageSpec,
    probe: WindowProbe,
}

impl<T: Send + 'static> Flow<T> {
    /// Group items per key into windows; choose the aggregate on the returned value.
    pub fn window(mut self, spec: impl Into<StageSpec>, window: WindowSpec) -> WindowedFlow<T> {
        let stage = spec.into();
        if self.parts.scaled_out && !self.parts.keyed_sources {
            self.parts.errors.push(Error::config(format!(
                "window stage '{}' keeps state per key, but the pipeline is scaled out and not \
                 every source is partitioned by key: instances would each see part of a key. \
                 Declare the sources `partitioned_by_key` (a topic keyed the same way) or \
                 repartition through a keyed topic first (`repartition_by_key`)",
                stage.name
            )));
        }
        if let Some(held) = window.max_held {
            if held >= self.parts.max_in_flight {
                self.parts.errors.push(Error::config(format!(
                    "window stage '{}': max_held ({held}) must be below the pipeline's \
                     max_in_flight ({}), or the stage could hold every slot and stall",
                    stage.name, self.parts.max_in_flight
                )));
            }
        }
        WindowedFlow {
            flow: self,
            spec: window,
            stage,
            probe: WindowProbe::default(),
        }
    }
}

impl<T: Clone + Send + 'static> WindowedFlow<T> {
    /// A view of this stage's open windows.
    pub fn probe(&self) -> WindowProbe {
        self.probe.clone()
    }

    /// Count the items of each window.
    pub fn count(self) -> Flow<Windowed<u64>> {
        self.aggregate(|| 0u64, |n, _| *n += 1, |a, b| *a += b)
    }

    /// Combine the items of each window with `f`.
    pub fn reduce<F>(self, f: F) -> Flow<Windowed<T>>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let g = f.clone();
        let flow = self.aggregate(
            || None::<T>,
            move |acc, t| {
                *acc = Some(match acc.take() {
                    Some(a) => f(a, t),
                    None => t,
                })
            },
            move |a, b| {
                if let Some(b) = b {
                    *a = Some(match a.take() {
                        Some(x) => g(x, b),
                        None => b,
                    });
                }
            },
        );
        // A window fires only with at least one item, so the value is always there.
        flow.filter_map("reduce-result", |w: Windowed<Option<T>>| {
            let Windowed {
                key,
                window,
                value,
                count,
                partial,
            } = w;
            value.map(|value| Windowed {
                key,
                window,
                value,
                count,
                partial,
            })
        })
    }

    /// Fold items into an accumulator per key and window. `merge` combines two accumulators
    /// (session windows merge when an item bridges two sessions).
    pub fn aggregate<A, I, F, M>(self, init: I, fold: F, merge: M) -> Flow<Windowed<A>>
    where
        A: Send + 'static,
        I: Fn() -> A + Send + Sync + 'static,
        F: Fn(&mut A, T) + Send + Sync + 'static,
        M: Fn(&mut A, A) + Send + Sync + 'static,
    {
        let WindowedFlow {
            flow,
            spec,
            stage,
            probe,
        } = self;
        let stage = flow.parts.stage(stage);
        if spec.late.is_some() {
            flow.parts.keep_originals();
        }
        let max_held = spec
            .max_held
            .unwrap_or((flow.parts.max_in_flight * 3 / 4).max(1));
        let op = WindowOp {
            upstream: flow.stream,
            done: false,
            spec,
            stage,
            init: Box::new(init),
            fold: Box::new(fold),
            merge: Box::new(merge),
            panes: HashMap::new(),
            index: BTreeMap::new(),
            next_id: 0,
            held: 0,
            max_held,
            max_seen: None,
            ready: VecDeque::new(),
            side: FuturesUnordered::new(),
            timer: None,
            timer_at: None,
            base: (Instant::now(), Timestamp::now().as_millis()),
            probe,
        };
        Flow {
            stream: op.boxed(),
            parts: flow.parts,
        }
    }
}
