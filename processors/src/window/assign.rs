//! Where an item arriving at a window stage goes: the windows its time falls in (fixed
//! windows) or the session it opens, extends or joins; late when every one of them has fired.
//! A panic in `init` or `fold` sends the item to the stage's error policy.

use std::panic::{catch_unwind, AssertUnwindSafe};

use futures_util::FutureExt;
use mailroom_core::{Error, Timestamp};

use super::operator::{Key, WindowOp};
use super::pane::{pane_mut, Pane, PaneAt};
use super::spec::{Kind, Time};
use super::LATE_WINDOW_END_HEADER;
use crate::flow::{Item, Meta};
use crate::metrics::add;
use crate::stage::{panic_error, RunningStage};
use crate::token::Tokens;

impl<T: Clone, A> WindowOp<T, A> {
    pub(super) fn on_item(&mut self, item: Item<T>) {
        add(&self.stage.counters.input, 1);
        let ts = match self.spec.time {
            Time::Processing => self.now_ms(),
            Time::Event => match item.meta.event_time {
                Some(t) => t.as_millis(),
                None => {
                    let error = Error::invalid_input(format!(
                        "window stage '{}' works on event time, but an item has none (set the \
                         message timestamp or add an event_time stage)",
                        self.stage.name
                    ));
                    let stage = self.stage.clone();
                    let tokens = item.meta.tokens;
                    self.side
                        .push(async move { stage.give_up(tokens, error, 1).await }.boxed());
                    return;
                }
            },
        };
        if self.spec.time == Time::Event {
            self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
        }
        let Item { value, meta } = item;
        let key = meta.key.clone();
        match self.spec.kind {
            Kind::Session { gap } => self.add_session(key, ts, gap, value, meta),
            Kind::Tumbling { size } => {
                let start = ts - ts % size;
                self.add_fixed(key, vec![start], size, value, meta)
            }
            Kind::Hopping { size, hop } => {
                let mut starts = Vec::new();
                let mut s = ts - ts % hop;
                loop {
                    if s.saturating_add(size) > ts {
                        starts.push(s);
                    }
                    if s < hop || s.saturating_add(size) <= ts {
                        break;
                    }
                    s -= hop;
                }
                starts.reverse();
                self.add_fixed(key, starts, size, value, meta)
            }
        }
    }

    fn late(&mut self, meta: Meta, window_end: u64) {
        add(&self.stage.pipeline.late, meta.tokens.len() as u64);
        let stage = self.stage.clone();
        match self.spec.late.clone() {
            None => {
                tracing::warn!(parent: &stage.span, window_end, "late input acked without a late side output (configure late_to)");
                self.side.push(
                    async move {
                        meta.tokens.done().await;
                        None
                    }
                    .boxed(),
                );
            }
            Some(sink) => self.side.push(
                async move {
                    for token in meta.tokens.into_vec() {
                        if let Some((mut message, _)) = token.original() {
                            let _ = message
                                .headers_mut()
                                .insert(LATE_WINDOW_END_HEADER, window_end.to_string());
                            if let Err(e) = sink.producer.send(&sink.destination, message).await {
                                return Some(
                                    Error::new(
                                        e.kind(),
                                        format!(
                                            "window stage '{}': cannot send late input to {}",
                                            stage.name, sink.destination
                                        ),
                                    )
                                    .with_source(e),
                                );
                            }
                        }
                        if let Some(s) = token.done() {
                            s.run().await;
                        }
                    }
                    None
                }
                .boxed(),
            ),
        }
    }

    fn add_fixed(&mut self, key: Key, starts: Vec<u64>, size: u64, value: T, meta: Meta) {
        let open: Vec<u64> = starts
            .into_iter()
            .filter(|s| !self.closed(s.saturating_add(size)))
            .collect();
        if open.is_empty() {
            let end = ts_end(&meta, size);
            self.late(meta, end);
            return;
        }
        let n = open.len();
        let mut tokens = Some(meta.tokens);
        let mut value = Some(value);
        for (i, start) in open.into_iter().enumerate() {
            let last = i + 1 == n;
            let t = if last {
                tokens.take()
            } else {
                tokens.as_mut().map(Tokens::fork)
            };
            let v = if last { value.take() } else { value.clone() };
            let (Some(t), Some(v)) = (t, v) else {
                continue;
            };
            let at = (key.clone(), start, start.saturating_add(size), meta.lane);
            if let Some((t, error)) = self.fold_into(at, t, v) {
                // The input goes to the policy through this share alone: the shares no
                // window took yet are finished here, so the policy's outcome settles the
                // input (once the windows that did take it have fired).
                if let Some(rest) = tokens.take() {
                    rest.done_deferred(&self.stage.in_flight);
                }
                self.reject(t, error);
                return;
            }
        }
    }

    /// Fold `value` into the pane `at` names (opened if need be), holding its tokens. When
    /// `init` or `fold` panics, the tokens come back with the error and a pane opened for
    /// them is closed again.
    fn fold_into(&mut self, at: PaneAt, tokens: Tokens, value: T) -> Option<(Tokens, Error)> {
        let key = at.0.clone();
        let stage = &self.stage;
        let init = &self.init;
        let opened = pane_mut(
            &mut self.panes,
            &mut self.index,
            &mut self.next_id,
            || guarded(stage, init),
            at,
        );
        let pane = match opened {
            Ok(pane) => pane,
            Err(error) => return Some((tokens, error)),
        };
        let added = tokens.len();
        let was_one = matches!(tokens, Tokens::One(_));
        if !pane.hold(tokens) {
            return None;
        }
        let fold = &self.fold;
        match guarded(stage, || fold(&mut pane.acc, value)) {
            Ok(()) => {
                pane.count += 1;
                self.held += added;
                None
            }
            Err(error) => {
                let tokens = pane.unhold(added, was_one);
                if pane.tokens.is_empty() {
                    let (end, id) = (pane.end, pane.id);
                    self.index.remove(&(end, id));
                    if let Some(list) = self.panes.get_mut(&key) {
                        list.retain(|p| p.id != id);
                        if list.is_empty() {
                            self.panes.remove(&key);
                        }
                    }
                }
                Some((tokens, error))
            }
        }
    }

    /// An input that cannot be added: to the stage's error policy.
    fn reject(&mut self, tokens: Tokens, error: Error) {
        add(&self.stage.counters.errors, 1);
        let stage = self.stage.clone();
        self.side
            .push(async move { stage.give_up(tokens, error, 1).await }.boxed());
    }

    fn add_session(&mut self, key: Key, ts: u64, gap: u64, value: T, meta: Meta) {
        let end = ts.saturating_add(gap);
        // Sessions this item touches: it falls within `gap` of them.
        let touching: Vec<usize> = self.panes.get(&key).map_or_else(Vec::new, |panes| {
            panes
                .iter()
                .enumerate()
                .filter(|(_, p)| end >= p.start && ts < p.end)
                .map(|(i, _)| i)
                .collect()
        });
        if touching.is_empty() {
            if self.closed(end) {
                self.late(meta, end);
                return;
            }
            let (init, fold) = (&self.init, &self.fold);
            let folded = guarded(&self.stage, || {
                let mut acc = init();
                fold(&mut acc, value);
                acc
            });
            let acc = match folded {
                Ok(acc) => acc,
                Err(error) => return self.reject(meta.tokens, error),
            };
            let id = self.next_id;
            self.next_id += 1;
            self.index.insert((end, id), key.clone());
            self.held += meta.tokens.len();
            let mut pane = Pane::new(id, ts, end, acc, meta.lane);
            pane.count = 1;
            pane.hold(meta.tokens);
            self.panes.entry(key).or_default().push(pane);
            return;
        }
        let Some(panes) = self.panes.get_mut(&key) else {
            return;
        };
        // Merge every touched session into the first (indices ascend), then add the item.
        let first = touching[0];
        let mut merged: Vec<Pane<A>> = Vec::new();
        for &i in touching[1..].iter().rev() {
            merged.push(panes.remove(i));
        }
        let target = &mut panes[first];
        self.index.remove(&(target.end, target.id));
        for other in merged {
            self.index.remove(&(other.end, other.id));
            target.start = target.start.min(other.start);
            target.end = target.end.max(other.end);
            let Pane {
                acc,
                count,
                tokens,
                positions,
                ..
            } = other;
            let merge = &self.merge;
            if let Err(error) = guarded(&self.stage, || merge(&mut target.acc, acc)) {
                // Two sessions are half combined and no one input is to blame: the stage
                // fails, and every input it holds (these sessions' too, dropped here) is
                // released for redelivery, where the merge runs again from the start.
                tracing::error!(parent: &self.stage.span, error = %error, "merge panicked; stopping the pipeline");
                self.ready.push_back(Err(self.stage.context(error)));
                self.done = true;
                return;
            }
            target.count += count;
            target.absorb(tokens, positions);
        }
        let added = meta.tokens.len();
        let was_one = matches!(meta.tokens, Tokens::One(_));
        let mut rejected = None;
        if target.hold(meta.tokens) {
            let fold = &self.fold;
            match guarded(&self.stage, || fold(&mut target.acc, value)) {
                Ok(()) => {
                    target.start = target.start.min(ts);
                    target.end = target.end.max(end);
                    target.count += 1;
                    self.held += added;
                }
                Err(error) => rejected = Some((target.unhold(added, was_one), error)),
            }
        }
        self.index.insert((target.end, target.id), key);
        if let Some((tokens, error)) = rejected {
            self.reject(tokens, error);
        }
    }
}

/// Run user code (`init`, `fold`, `merge`) as `stage`, a panic turned into an error.
fn guarded<R>(stage: &RunningStage, f: impl FnOnce() -> R) -> Result<R, Error> {
    stage
        .span
        .in_scope(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|panic| panic_error(&stage.name, panic))
}

fn ts_end(meta: &Meta, size: u64) -> u64 {
    let ts = meta.event_time.map_or(0, Timestamp::as_millis);
    (ts - ts % size).saturating_add(size)
}
