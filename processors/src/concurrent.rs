//! An async stage working on several items at once while keeping per-key or per-partition
//! order.
//!
//! Each item is assigned a lane (its key, its partition, or none). At most one item per lane
//! runs at a time; later items of a busy lane wait in that lane's queue, in arrival order. Items
//! of different lanes run in parallel, up to the stage's concurrency. Upstream is not polled
//! while the waiting queues hold `max_waiting` items, so memory stays bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use futures_util::Stream;

use crate::flow::{Item, Ordering, Step};

pub(crate) type MakeFuture<T, U> =
    Box<dyn FnMut(Item<T>) -> BoxFuture<'static, Option<Step<U>>> + Send>;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Lane {
    Key(Arc<str>),
    Partition(u64),
}

type Running<U> = FuturesUnordered<BoxFuture<'static, (Option<Lane>, Option<Step<U>>)>>;

pub(crate) struct Concurrent<T, U> {
    upstream: BoxStream<'static, Step<T>>,
    upstream_done: bool,
    make: MakeFuture<T, U>,
    running: Running<U>,
    waiting: HashMap<Lane, VecDeque<Item<T>>>,
    waiting_len: usize,
    busy: HashSet<Lane>,
    limit: usize,
    max_waiting: usize,
    ordering: Ordering,
}

impl<T: Send + 'static, U: Send + 'static> Concurrent<T, U> {
    pub fn new(
        upstream: BoxStream<'static, Step<T>>,
        make: MakeFuture<T, U>,
        limit: usize,
        max_waiting: usize,
        ordering: Ordering,
    ) -> Self {
        Concurrent {
            upstream,
            upstream_done: false,
            make,
            running: FuturesUnordered::new(),
            waiting: HashMap::new(),
            waiting_len: 0,
            busy: HashSet::new(),
            limit: limit.max(1),
            max_waiting: max_waiting.max(1),
            ordering,
        }
    }

    fn lane(&self, item: &Item<T>) -> Option<Lane> {
        match self.ordering {
            Ordering::PerKey => item.meta.key.clone().map(Lane::Key),
            Ordering::PerPartition => Some(Lane::Partition(item.meta.lane)),
            Ordering::Unordered => None,
        }
    }

    fn admit(&mut self, item: Item<T>) {
        let lane = self.lane(&item);
        if let Some(lane) = &lane {
            if self.busy.contains(lane) {
                self.waiting
                    .entry(lane.clone())
                    .or_default()
                    .push_back(item);
                self.waiting_len += 1;
                return;
            }
            self.busy.insert(lane.clone());
        }
        self.start(item, lane);
    }

    fn start(&mut self, item: Item<T>, lane: Option<Lane>) {
        let fut = (self.make)(item);
        self.running.push(fut.map(move |out| (lane, out)).boxed());
    }

    fn release(&mut self, lane: Lane) {
        let next = match self.waiting.get_mut(&lane) {
            Some(queue) => {
                let next = queue.pop_front();
                if queue.is_empty() {
                    self.waiting.remove(&lane);
                }
                next
            }
            None => None,
        };
        match next {
            Some(item) => {
                self.waiting_len -= 1;
                self.start(item, Some(lane));
            }
            None => {
                self.busy.remove(&lane);
            }
        }
    }
}

impl<T: Send + 'static, U: Send + 'static> Stream for Concurrent<T, U> {
    type Item = Step<U>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Step<U>>> {
        let this = self.get_mut();
        loop {
            while !this.upstream_done
                && this.running.len() < this.limit
                && this.waiting_len < this.max_waiting
            {
                match this.upstream.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(item))) => this.admit(item),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => this.upstream_done = true,
                    Poll::Pending => break,
                }
            }
            match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some((lane, out))) => {
                    if let Some(lane) = lane {
                        this.release(lane);
                    }
                    if let Some(step) = out {
                        return Poll::Ready(Some(step));
                    }
                }
                Poll::Ready(None) => {
                    // Nothing runs; waiting items only exist behind running ones, so either
                    // upstream is finished or it has registered our waker.
                    return if this.upstream_done {
                        Poll::Ready(None)
                    } else {
                        Poll::Pending
                    };
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// No field is ever pinned structurally (futures are boxed), so moving the stage is sound.
impl<T, U> Unpin for Concurrent<T, U> {}
