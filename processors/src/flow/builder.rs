//! A pipeline's settings and sources: [`Pipeline::builder`] up to [`PipelineBuilder::flow`],
//! which merges the sources into the first [`Flow`].

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use mailroom_core::{Consumer, Error, Message};
use tokio::sync::{mpsc, watch};

use super::{Flow, PipelineParts, Step};
use crate::in_flight::{InFlight, Slots};
use crate::metrics::Metrics;

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
    pub(super) consumer: Box<dyn Consumer>,
    pub(super) partitioning: Partitioning,
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
    pub(crate) parts: PipelineParts,
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
        let in_flight = Arc::new(InFlight {
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
        let mut parts = PipelineParts {
            metrics,
            in_flight,
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
            .map(|source| parts.add_source(source).boxed())
            .collect();
        let stream = if streams.len() == 1 {
            streams.remove(0)
        } else {
            stream::select_all(streams).boxed()
        };
        Flow { stream, parts }
    }
}
