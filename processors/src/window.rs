//! Keyed windows: tumbling, hopping and session; on event time (watermarks, allowed lateness,
//! late data to a side output) or processing time.
//!
//! Settle-after-result: a window keeps the tokens of every input folded into it and hands them
//! to its result, so those inputs are acked only once the result is confirmed downstream. A
//! crash before that leaves them unsettled; they are redelivered and the restarted pipeline
//! computes the window again. No state store is needed.
//!
//! Redelivered while held: a consumer-group rebalance can restart a partition from its last
//! commit while this stage still holds inputs from it (uncommitted, since their window is
//! open). With offsets from the broker, a pane recognises such an input by its partition and
//! offset: the new delivery's token replaces the old one (the broker ignores settles from a
//! revoked assignment) and the value is not folded twice. An input whose window already fired
//! is counted again in a new result for that window: a duplicate, as at-least-once allows.
//!
//! Event time: the watermark is the largest event time seen minus `max_out_of_order`. A window
//! fires once `end + allowed_lateness <= watermark`, exactly once (unless fired early, see
//! below). An input whose every window has already fired is late: it goes to the late side
//! output (or, with none configured, is counted and logged) and its input is acked after that.
//!
//! Bounded: the inputs of open windows count against the pipeline's `max_in_flight`. When a
//! window stage holds `max_held` inputs, it fires its oldest window early with `partial: true`
//! and starts that window afresh; results of one key and window then add up to the total.
//!
//! User code: a panic in `init` or `fold` is blamed on the input being added, which goes to
//! the stage's error policy (skip, dead-letter, ...) and is left out of the window; whatever
//! `fold` changed in the accumulator before it panicked stays. A panic in `merge` (two session
//! windows joined) cannot be blamed on one input and leaves both sessions half combined, so it
//! fails the stage: the pipeline stops and every input the stage held is redelivered.
//!
//! Time: event times come from messages and may be anything up to the largest timestamp; a
//! window whose end would lie past it ends at the largest timestamp.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesUnordered, StreamExt};
use futures_util::{FutureExt, Stream};
use mailroom_core::{Error, Timestamp};
use tokio::time::{Instant, Sleep};

use crate::flow::{Flow, Item, Meta, Step};
use crate::metrics::add;
use crate::policy::{panic_error, Sink, StageRt, StageSpec};
use crate::token::{Position, Token, Tokens};

/// Header on a late input sent to the late side output: the end of the window it missed.
pub const LATE_WINDOW_END_HEADER: &str = "x-mailroom-late-window-end";

/// A window's bounds in milliseconds since the epoch: `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// First millisecond in the window.
    pub start: Timestamp,
    /// First millisecond after the window.
    pub end: Timestamp,
}

/// The result of one window for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Windowed<A> {
    /// The key (None for items without one).
    pub key: Option<String>,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub value: A,
    /// How many inputs were folded in.
    pub count: u64,
    /// Fired early because the stage held too many inputs; more results for the same key and
    /// window may follow and add up to the total.
    pub partial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tumbling { size: u64 },
    Hopping { size: u64, hop: u64 },
    Session { gap: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Time {
    Event,
    Processing,
}

/// What kind of window, on which time, with which lateness.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    kind: Kind,
    time: Time,
    max_out_of_order: u64,
    lateness: u64,
    late: Option<Sink>,
    max_held: Option<usize>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl WindowSpec {
    fn new(kind: Kind) -> Self {
        WindowSpec {
            kind,
            time: Time::Event,
            max_out_of_order: 0,
            lateness: 0,
            late: None,
            max_held: None,
        }
    }

    /// Fixed, non-overlapping windows of `size` (at least 1 ms).
    pub fn tumbling(size: Duration) -> Self {
        Self::new(Kind::Tumbling {
            size: ms(size).max(1),
        })
    }

    /// Windows of `size` starting every `hop`; an item belongs to `size / hop` of them.
    pub fn hopping(size: Duration, hop: Duration) -> Self {
        let hop = ms(hop).max(1);
        Self::new(Kind::Hopping {
            size: ms(size).max(hop),
            hop,
        })
    }

    /// Per-key sessions that close after `gap` without an item.
    pub fn session(gap: Duration) -> Self {
        Self::new(Kind::Session {
            gap: ms(gap).max(1),
        })
    }

    /// Use each item's event time (the message timestamp, or what [`Flow::event_time`] set).
    /// This is the default.
    pub fn event_time(mut self) -> Self {
        self.time = Time::Event;
        self
    }

    /// Use the time items arrive at the stage (tokio's clock, so a paused test clock drives it).
    pub fn processing_time(mut self) -> Self {
        self.time = Time::Processing;
        self
    }

    /// The watermark trails the largest event time seen by this much.
    pub fn max_out_of_order(mut self, d: Duration) -> Self {
        self.max_out_of_order = ms(d);
        self
    }

    /// Keep a window open this long after the watermark passed its end.
    pub fn allowed_lateness(mut self, d: Duration) -> Self {
        self.lateness = ms(d);
        self
    }

    /// Send late inputs (their original messages) here.
    pub fn late_to(mut self, sink: Sink) -> Self {
        self.late = Some(sink);
        self
    }

    /// Fire the oldest window early once the stage holds this many inputs (default: three
    /// quarters of the pipeline's `max_in_flight`, which must stay below it).
    pub fn max_held(mut self, n: usize) -> Self {
        self.max_held = Some(n.max(1));
        self
    }
}

/// A window stage being configured: pick the aggregate next.
pub struct WindowedFlow<T> {
    flow: Flow<T>,
    spec: WindowSpec,
    stage: StageSpec,
    probe: WindowProbe,
}

/// A view of a window stage's open windows, for tests and diagnostics.
#[derive(Clone, Default)]
pub struct WindowProbe {
    state: Arc<Mutex<ProbeState>>,
}

#[derive(Default)]
struct ProbeState {
    open: BTreeMap<u64, (Option<Arc<str>>, Window, u64)>,
    watermark: Option<Timestamp>,
    held: usize,
}

impl WindowProbe {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every open window: its key, bounds and how many inputs it holds.
    pub fn open_windows(&self) -> Vec<(Option<String>, Window, u64)> {
        self.lock()
            .open
            .values()
            .map(|(k, w, n)| (k.as_deref().map(str::to_owned), *w, *n))
            .collect()
    }

    /// The current watermark (event time), if any item was seen.
    pub fn watermark(&self) -> Option<Timestamp> {
        self.lock().watermark
    }

    /// Input tokens the stage holds.
    pub fn held(&self) -> usize {
        self.lock().held
    }
}

impl<T: Send + 'static> Flow<T> {
    /// Group items per key into windows; choose the aggregate on the returned value.
    pub fn window(mut self, spec: impl Into<StageSpec>, window: WindowSpec) -> WindowedFlow<T> {
        let stage = spec.into();
        if self.ctx.scaled_out && !self.ctx.keyed_sources {
            self.ctx.errors.push(Error::config(format!(
                "window stage '{}' keeps state per key, but the pipeline is scaled out and not \
                 every source is partitioned by key: instances would each see part of a key. \
                 Declare the sources `partitioned_by_key` (a topic keyed the same way) or \
                 repartition through a keyed topic first (`repartition_by_key`)",
                stage.name
            )));
        }
        if let Some(held) = window.max_held {
            if held >= self.ctx.max_in_flight {
                self.ctx.errors.push(Error::config(format!(
                    "window stage '{}': max_held ({held}) must be below the pipeline's \
                     max_in_flight ({}), or the stage could hold every slot and stall",
                    stage.name, self.ctx.max_in_flight
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
        let st = flow.ctx.stage(stage);
        if spec.late.is_some() {
            flow.ctx.keep_originals();
        }
        let max_held = spec
            .max_held
            .unwrap_or((flow.ctx.max_in_flight * 3 / 4).max(1));
        let op = WindowOp {
            upstream: flow.stream,
            done: false,
            spec,
            st,
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
            ctx: flow.ctx,
        }
    }
}

struct Pane<A> {
    id: u64,
    start: u64,
    end: u64,
    acc: A,
    tokens: Vec<Token>,
    count: u64,
    lane: u64,
    /// The source positions of the inputs folded in (brokers with offsets only).
    positions: HashMap<Position, Seen>,
}

/// The inputs at one source position that a pane has folded in.
struct Seen {
    /// The latest delivery of that position.
    input: u64,
    /// Tokens at that position the pane holds.
    count: usize,
    /// How many of them belong to earlier deliveries, still to be replaced.
    older: usize,
}

impl<A> Pane<A> {
    fn new(id: u64, start: u64, end: u64, acc: A, lane: u64) -> Self {
        Pane {
            id,
            start,
            end,
            acc,
            tokens: Vec::new(),
            count: 0,
            lane,
            positions: HashMap::new(),
        }
    }

    /// Hold an item's tokens. Returns false when the item is a redelivery of an input this
    /// pane already folded in: its token then takes the place of the earlier delivery's, and
    /// the item must not be folded again.
    ///
    /// Why: a consumer-group rebalance (Kafka's eager protocol revokes every partition and
    /// often hands it straight back) restarts a partition from its last commit, and the inputs
    /// of open windows are not committed yet, so they arrive a second time while the first
    /// delivery is still held here. Counting them again would double the window's result;
    /// keeping the first token would not do either, since the broker ignores settles from a
    /// revoked assignment: the new delivery's token is the one whose ack commits the offset.
    /// The earlier token is dropped, which leaves its (revoked) delivery unsettled.
    fn hold(&mut self, tokens: Tokens) -> bool {
        let token = match tokens {
            Tokens::One(token) => token,
            Tokens::Many(tokens) => {
                self.tokens.extend(tokens);
                return true;
            }
        };
        let Some((input, position)) = token.identity() else {
            self.tokens.push(token);
            return true;
        };
        let seen = match self.positions.entry(position) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Seen {
                    input,
                    count: 1,
                    older: 0,
                });
                self.tokens.push(token);
                return true;
            }
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        };
        if seen.input != input {
            // A newer delivery: every token held at this position is from an earlier one.
            seen.input = input;
            seen.older = seen.count;
        }
        if seen.older == 0 {
            // Another item derived from the same delivery (a flat_map): a distinct input.
            seen.count += 1;
            self.tokens.push(token);
            return true;
        }
        let earlier = self
            .tokens
            .iter()
            .position(|t| matches!(t.identity(), Some((i, p)) if p == position && i != input));
        match earlier {
            Some(i) => {
                seen.older -= 1;
                self.tokens[i] = token;
                false
            }
            None => {
                seen.older = 0;
                seen.count += 1;
                self.tokens.push(token);
                true
            }
        }
    }

    /// Give back the last tokens [`hold`](Pane::hold) took, `taken` of them from `was_one`
    /// (a single token), when their item could not be folded in after all.
    fn unhold(&mut self, taken: usize, was_one: bool) -> Tokens {
        let mut tokens = self
            .tokens
            .split_off(self.tokens.len().saturating_sub(taken));
        if was_one {
            // `hold` tracks the position of a single token only.
            if let Some(position) = tokens.first().and_then(Token::identity).map(|(_, p)| p) {
                if let std::collections::hash_map::Entry::Occupied(mut seen) =
                    self.positions.entry(position)
                {
                    seen.get_mut().count = seen.get().count.saturating_sub(1);
                    if seen.get().count == 0 {
                        seen.remove();
                    }
                }
            }
        }
        match tokens.pop() {
            Some(token) if was_one && tokens.is_empty() => Tokens::One(token),
            Some(token) => {
                tokens.push(token);
                Tokens::Many(tokens)
            }
            None => Tokens::Many(tokens),
        }
    }

    /// Take over another pane of the same key (merging sessions).
    fn absorb(&mut self, tokens: Vec<Token>, positions: HashMap<Position, Seen>) {
        self.tokens.extend(tokens);
        for (position, seen) in positions {
            self.positions.entry(position).or_insert(seen);
        }
    }
}

type Key = Option<Arc<str>>;
type FoldFn<A, T> = Box<dyn Fn(&mut A, T) + Send + Sync>;

struct WindowOp<T, A> {
    upstream: BoxStream<'static, Step<T>>,
    done: bool,
    spec: WindowSpec,
    st: Arc<StageRt>,
    init: Box<dyn Fn() -> A + Send + Sync>,
    fold: FoldFn<A, T>,
    merge: FoldFn<A, A>,
    panes: HashMap<Key, Vec<Pane<A>>>,
    /// Open panes by (end, id), to fire in end order.
    index: BTreeMap<(u64, u64), Key>,
    next_id: u64,
    held: usize,
    max_held: usize,
    max_seen: Option<u64>,
    ready: VecDeque<Step<Windowed<A>>>,
    side: FuturesUnordered<BoxFuture<'static, Option<Error>>>,
    timer: Option<Pin<Box<Sleep>>>,
    timer_at: Option<u64>,
    base: (Instant, u64),
    probe: WindowProbe,
}

impl<T: Clone, A> WindowOp<T, A> {
    fn now_ms(&self) -> u64 {
        self.base.1 + ms(Instant::now().saturating_duration_since(self.base.0))
    }

    fn instant_of(&self, at_ms: u64) -> Instant {
        self.base.0 + Duration::from_millis(at_ms.saturating_sub(self.base.1))
    }

    fn watermark(&self) -> Option<u64> {
        match self.spec.time {
            Time::Event => self
                .max_seen
                .map(|m| m.saturating_sub(self.spec.max_out_of_order)),
            Time::Processing => Some(self.now_ms()),
        }
    }

    /// Whether a window ending at `end` has fired (or must fire now).
    fn closed(&self, end: u64) -> bool {
        match (self.spec.time, self.watermark()) {
            (Time::Event, Some(wm)) => end.saturating_add(self.spec.lateness) <= wm,
            (Time::Processing, Some(now)) => end <= now,
            _ => false,
        }
    }

    fn on_item(&mut self, item: Item<T>) {
        add(&self.st.counters.input, 1);
        let ts = match self.spec.time {
            Time::Processing => self.now_ms(),
            Time::Event => match item.meta.event_time {
                Some(t) => t.as_millis(),
                None => {
                    let error = Error::invalid_input(format!(
                        "window stage '{}' works on event time, but an item has none (set the \
                         message timestamp or add an event_time stage)",
                        self.st.name
                    ));
                    let st = self.st.clone();
                    let tokens = item.meta.tokens;
                    self.side
                        .push(async move { st.give_up(tokens, error, 1).await }.boxed());
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
        add(&self.st.pipeline.late, meta.tokens.len() as u64);
        let st = self.st.clone();
        match self.spec.late.clone() {
            None => {
                tracing::warn!(parent: &st.span, window_end, "late input acked without a late side output (configure late_to)");
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
                                            st.name, sink.destination
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
                    rest.done_deferred(&self.st.shared);
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
        let st = &self.st;
        let init = &self.init;
        let opened = pane_mut(
            &mut self.panes,
            &mut self.index,
            &mut self.next_id,
            || guarded(st, init),
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
        match guarded(st, || fold(&mut pane.acc, value)) {
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
        add(&self.st.counters.errors, 1);
        let st = self.st.clone();
        self.side
            .push(async move { st.give_up(tokens, error, 1).await }.boxed());
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
            let folded = guarded(&self.st, || {
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
            if let Err(error) = guarded(&self.st, || merge(&mut target.acc, acc)) {
                // Two sessions are half combined and no one input is to blame: the stage
                // fails, and every input it holds (these sessions' too, dropped here) is
                // released for redelivery, where the merge runs again from the start.
                tracing::error!(parent: &self.st.span, error = %error, "merge panicked; stopping the pipeline");
                self.ready.push_back(Err(self.st.context(error)));
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
            match guarded(&self.st, || fold(&mut target.acc, value)) {
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

    /// Fire every window that is due; with `all`, every open window (end of input).
    fn fire_due(&mut self, all: bool) {
        while let Some((&(end, id), _)) = self.index.iter().next() {
            if !all && !self.closed(end) {
                break;
            }
            self.fire(end, id, false);
        }
        while self.held >= self.max_held {
            let Some((&(end, id), _)) = self.index.iter().next() else {
                break;
            };
            tracing::debug!(parent: &self.st.span, held = self.held, "window stage holds too many inputs; firing the oldest window early");
            self.fire(end, id, true);
        }
    }

    fn fire(&mut self, end: u64, id: u64, partial: bool) {
        let Some(key) = self.index.remove(&(end, id)) else {
            return;
        };
        let Some(panes) = self.panes.get_mut(&key) else {
            return;
        };
        let Some(pos) = panes.iter().position(|p| p.id == id) else {
            return;
        };
        let pane = panes.swap_remove(pos);
        if panes.is_empty() {
            self.panes.remove(&key);
        }
        self.held = self.held.saturating_sub(pane.tokens.len());
        add(&self.st.counters.output, 1);
        let result = Windowed {
            key: key.as_deref().map(str::to_owned),
            window: Window {
                start: Timestamp::from_millis(pane.start),
                end: Timestamp::from_millis(pane.end),
            },
            value: pane.acc,
            count: pane.count,
            partial,
        };
        self.ready.push_back(Ok(Item {
            value: result,
            meta: Meta {
                tokens: Tokens::Many(pane.tokens),
                key,
                lane: pane.lane,
                event_time: Some(Timestamp::from_millis(pane.end.saturating_sub(1))),
            },
        }));
    }

    fn update_probe(&self) {
        let mut probe = self.probe.lock();
        probe.open.clear();
        for panes in self.panes.values() {
            for p in panes {
                let key = self.index.get(&(p.end, p.id)).cloned().flatten();
                probe.open.insert(
                    p.id,
                    (
                        key,
                        Window {
                            start: Timestamp::from_millis(p.start),
                            end: Timestamp::from_millis(p.end),
                        },
                        p.count,
                    ),
                );
            }
        }
        probe.watermark = match self.spec.time {
            Time::Event => self.watermark().map(Timestamp::from_millis),
            Time::Processing => None,
        };
        probe.held = self.held;
    }

    /// Arm the processing-time timer for the earliest open window.
    fn arm_timer(&mut self) {
        if self.spec.time != Time::Processing {
            return;
        }
        let next = self.index.keys().next().map(|(end, _)| *end);
        if next != self.timer_at {
            self.timer_at = next;
            self.timer = next.map(|end| Box::pin(tokio::time::sleep_until(self.instant_of(end))));
        }
    }
}

type PaneAt = (Key, u64, u64, u64);

/// The pane of `key` starting at `start`, opened with `init`'s accumulator if it is not open
/// yet.
fn pane_mut<'a, A>(
    panes: &'a mut HashMap<Key, Vec<Pane<A>>>,
    index: &mut BTreeMap<(u64, u64), Key>,
    next_id: &mut u64,
    init: impl FnOnce() -> Result<A, Error>,
    (key, start, end, lane): PaneAt,
) -> Result<&'a mut Pane<A>, Error> {
    let found = panes
        .get(&key)
        .and_then(|list| list.iter().position(|p| p.start == start));
    let pos = match found {
        Some(pos) => pos,
        None => {
            // Called before the key's entry is made, so a failed init leaves nothing behind.
            let acc = init()?;
            let id = *next_id;
            *next_id += 1;
            index.insert((end, id), key.clone());
            let list = panes.entry(key.clone()).or_default();
            list.push(Pane::new(id, start, end, acc, lane));
            list.len() - 1
        }
    };
    let list = panes.entry(key).or_default();
    Ok(&mut list[pos])
}

/// Run user code (`init`, `fold`, `merge`) as the stage `st`, a panic turned into an error.
fn guarded<R>(st: &StageRt, f: impl FnOnce() -> R) -> Result<R, Error> {
    st.span
        .in_scope(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|panic| panic_error(&st.name, panic))
}

fn ts_end(meta: &Meta, size: u64) -> u64 {
    let ts = meta.event_time.map_or(0, Timestamp::as_millis);
    (ts - ts % size).saturating_add(size)
}

impl<T: Clone, A> Stream for WindowOp<T, A> {
    type Item = Step<Windowed<A>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Side outputs (late data, failed items) settle in the background of this stream.
            while let Poll::Ready(Some(failed)) = this.side.poll_next_unpin(cx) {
                if let Some(e) = failed {
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if let Some(step) = this.ready.pop_front() {
                return Poll::Ready(Some(step));
            }
            if this.done {
                if this.side.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
            match this.upstream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    this.on_item(item);
                    this.fire_due(false);
                    this.arm_timer();
                    this.update_probe();
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    // End of input (shutdown or sources ended): flush every open window.
                    this.done = true;
                    this.fire_due(true);
                    this.update_probe();
                }
                Poll::Pending => {
                    if let Some(timer) = this.timer.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            this.timer_at = None;
                            this.timer = None;
                            this.fire_due(false);
                            this.arm_timer();
                            this.update_probe();
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

// No field is ever pinned structurally (the timer is boxed), so moving the op is sound.
impl<T, A> Unpin for WindowOp<T, A> {}
