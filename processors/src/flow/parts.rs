//! What every flow of one pipeline shares while it is built and run: counters, the in-flight
//! bound, the shutdown signal, the settings async and window stages read, and the problems
//! found while building.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_core::{Consumer, Error};
use tokio::sync::{mpsc, watch};

use super::source::SourcePoll;
use super::{Ordering, Source};
use crate::in_flight::InFlight;
use crate::metrics::Metrics;
use crate::policy::ErrorPolicy;
use crate::stage::{RunningStage, StageSpec};
use crate::token::SettleJob;

/// What every flow of one pipeline shares, moved from stage to stage.
pub(crate) struct PipelineParts {
    pub metrics: Metrics,
    pub in_flight: Arc<InFlight>,
    pub ordering: Ordering,
    pub max_in_flight: usize,
    pub drain_timeout: Duration,
    pub log_every: Option<Duration>,
    pub scaled_out: bool,
    pub keyed_sources: bool,
    pub stop: watch::Sender<bool>,
    pub settle_rx: Option<mpsc::UnboundedReceiver<SettleJob>>,
    /// Sources whose intake stopped, closed once the drain is over (see `StoppedSources`).
    pub stopped: StoppedSources,
    /// Problems found while building, reported by the terminal step.
    pub errors: Vec<Error>,
    /// Sources added so far (each one's index keeps its lanes apart).
    pub sources: u64,
}

/// Consumers whose intake has stopped, kept open until the pipeline has drained.
///
/// A consumer is closed only after the inputs it delivered are settled: a backend may batch
/// acks and wait for them in `close` (SQS does), so closing first would leave the drain's acks
/// with nothing waiting for them, or make each one wait on its own.
pub(crate) type StoppedSources = Arc<Mutex<Vec<Box<dyn Consumer>>>>;

impl PipelineParts {
    /// Another source of this pipeline, as a stream: it shares the in-flight bound and stops
    /// on the pipeline's shutdown.
    pub(crate) fn add_source(&mut self, source: Source) -> SourcePoll {
        let index = self.sources;
        self.sources += 1;
        SourcePoll::new(
            source.consumer,
            index,
            self.stop.subscribe(),
            self.in_flight.clone(),
            self.stopped.clone(),
        )
    }

    /// The running form of a stage added to this pipeline: its span, counters and policy.
    pub fn stage(&self, spec: StageSpec) -> Arc<RunningStage> {
        if matches!(spec.policy.terminal(), ErrorPolicy::DeadLetter(_)) {
            self.keep_originals();
        }
        let counters = self.metrics.stage(&spec.name);
        Arc::new(RunningStage {
            span: tracing::info_span!("stage", name = %spec.name),
            name: Arc::from(spec.name.as_str()),
            counters,
            pipeline: self.metrics.pipeline.clone(),
            in_flight: self.in_flight.clone(),
            policy: spec.policy,
            concurrency: spec.concurrency,
        })
    }

    /// Make every input keep its original message, for a stage that sends it on (a dead
    /// letter, a late input).
    pub fn keep_originals(&self) {
        self.in_flight
            .keep_originals
            .store(true, AtomicOrdering::Relaxed);
    }
}
