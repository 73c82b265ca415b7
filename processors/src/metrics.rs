//! Counters of a running pipeline, readable at any time as a snapshot, and published through
//! the `metrics` facade (the one `mailroom_core::layer::MetricsLayer` records through).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::in_flight::Slots;

/// Counters of the whole pipeline.
#[derive(Default)]
pub(crate) struct PipelineCounters {
    pub received: AtomicU64,
    pub out: AtomicU64,
    pub filtered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub skipped: AtomicU64,
    pub late: AtomicU64,
    /// Acks made by the pipeline's own task (single writer, see `bump`).
    pub acked: AtomicU64,
    /// Acks made by the settler task (its only writer).
    pub acked_by_settler: AtomicU64,
    pub requeued: AtomicU64,
    pub abandoned: AtomicU64,
    pub settle_errors: AtomicU64,
    pub in_flight_peak: AtomicU64,
}

/// Counters of one stage.
#[derive(Default)]
pub(crate) struct StageCounters {
    pub name: String,
    pub input: AtomicU64,
    pub output: AtomicU64,
    pub filtered: AtomicU64,
    pub errors: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub skipped: AtomicU64,
}

// Both `#[inline]`: a generic stage is compiled in the crate that names its function, where a
// function of this crate without it is a call, on the per-message path.
#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Add to a counter that one task alone writes: most are written only by the pipeline's own
/// task (stages, sinks and their settles all run inside it), and the settler task has an ack
/// counter of its own. A plain load and store is enough there and costs much less than an
/// atomic add on the per-message path; readers on other threads still see whole values.
/// Counters that any thread may touch (inputs released on drop) use `add`.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A live view of a pipeline's counters; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) pipeline: Arc<PipelineCounters>,
    pub(crate) stages: Arc<Mutex<Vec<Arc<StageCounters>>>>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) max_in_flight: usize,
    /// The `pipeline` label of the published counters: `pipeline-<n>`, n counting the
    /// pipelines built by this process.
    label: Arc<str>,
}

impl Metrics {
    pub(crate) fn new(slots: Arc<Slots>, max_in_flight: usize) -> Self {
        static BUILT: AtomicU64 = AtomicU64::new(0);
        let n = BUILT.fetch_add(1, Ordering::Relaxed) + 1;
        Metrics {
            label: format!("pipeline-{n}").into(),
            pipeline: Arc::default(),
            stages: Arc::default(),
            slots,
            max_in_flight,
        }
    }

    pub(crate) fn stage(&self, name: &str) -> Arc<StageCounters> {
        let counters = Arc::new(StageCounters {
            name: name.to_owned(),
            ..StageCounters::default()
        });
        self.stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(counters.clone());
        counters
    }

    /// Inputs held right now (received and not yet settled).
    pub fn in_flight(&self) -> u64 {
        self.slots.held() as u64
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> Snapshot {
        let p = &self.pipeline;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let stages = self
            .stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| StageSnapshot {
                name: s.name.clone(),
                input: get(&s.input),
                output: get(&s.output),
                filtered: get(&s.filtered),
                errors: get(&s.errors),
                retried: get(&s.retried),
                dead_lettered: get(&s.dead_lettered),
                skipped: get(&s.skipped),
            })
            .collect();
        Snapshot {
            received: get(&p.received),
            out: get(&p.out),
            filtered: get(&p.filtered),
            retried: get(&p.retried),
            dead_lettered: get(&p.dead_lettered),
            skipped: get(&p.skipped),
            late: get(&p.late),
            acked: get(&p.acked) + get(&p.acked_by_settler),
            requeued: get(&p.requeued),
            abandoned: get(&p.abandoned),
            settle_errors: get(&p.settle_errors),
            in_flight: self.in_flight(),
            in_flight_peak: get(&p.in_flight_peak),
            max_in_flight: self.max_in_flight as u64,
            stages,
        }
    }
}

impl Metrics {
    /// The `pipeline` label this pipeline publishes under: `pipeline-<n>`, n counting the
    /// pipelines this process built, in order.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// [`publish_as`](Self::publish_as) under this pipeline's own [`label`](Self::label).
    pub fn publish(&self) {
        self.publish_as(&self.label);
    }
}

/// Prefix of the pipeline counters in the `metrics` facade: `mailroom.pipeline.received`, ...
pub const PIPELINE_METRIC_PREFIX: &str = "mailroom.pipeline";

impl Metrics {
    /// Publish the counters through the `metrics` facade, as absolute values: counters
    /// `mailroom.pipeline.<name>` (the [`Snapshot`] field names), per stage with a `stage`
    /// label (`mailroom.pipeline.stage.<name>`), and gauges `mailroom.pipeline.in_flight` and
    /// `.in_flight_peak`; every one labelled `pipeline`. A running pipeline publishes at each
    /// `log_every` tick and when it ends, labelled `pipeline-<n>` (see [`Metrics::label`]);
    /// with no recorder installed this costs nothing.
    ///
    /// The hot path keeps its plain atomics: publishing a copy now and then costs a few
    /// lookups per tick, where recording each event through the facade would cost one per
    /// message.
    pub fn publish_as(&self, pipeline: &str) {
        let s = self.snapshot();
        let label = pipeline.to_owned();
        let counter = |name: &str, value: u64| {
            ::metrics::counter!(format!("{PIPELINE_METRIC_PREFIX}.{name}"), "pipeline" => label.clone())
                .absolute(value);
        };
        counter("received", s.received);
        counter("out", s.out);
        counter("filtered", s.filtered);
        counter("retried", s.retried);
        counter("dead_lettered", s.dead_lettered);
        counter("skipped", s.skipped);
        counter("late", s.late);
        counter("acked", s.acked);
        counter("requeued", s.requeued);
        counter("abandoned", s.abandoned);
        counter("settle_errors", s.settle_errors);
        ::metrics::gauge!(format!("{PIPELINE_METRIC_PREFIX}.in_flight"), "pipeline" => label.clone())
            .set(s.in_flight as f64);
        ::metrics::gauge!(format!("{PIPELINE_METRIC_PREFIX}.in_flight_peak"), "pipeline" => label.clone())
            .set(s.in_flight_peak as f64);
        for stage in &s.stages {
            let stage_counter = |name: &str, value: u64| {
                ::metrics::counter!(
                    format!("{PIPELINE_METRIC_PREFIX}.stage.{name}"),
                    "pipeline" => label.clone(),
                    "stage" => stage.name.clone(),
                )
                .absolute(value);
            };
            stage_counter("input", stage.input);
            stage_counter("output", stage.output);
            stage_counter("filtered", stage.filtered);
            stage_counter("errors", stage.errors);
            stage_counter("retried", stage.retried);
            stage_counter("dead_lettered", stage.dead_lettered);
            stage_counter("skipped", stage.skipped);
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// The pipeline's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Inputs received from the sources (redeliveries counted again).
    pub received: u64,
    /// Outputs confirmed by a sink.
    pub out: u64,
    /// Items filtered out by a stage or a router (their inputs acked).
    pub filtered: u64,
    /// Retries of a failed stage or send.
    pub retried: u64,
    /// Inputs sent to a dead-letter sink (and confirmed there).
    pub dead_lettered: u64,
    /// Items dropped by a `Skip` error policy (their inputs acked).
    pub skipped: u64,
    /// Inputs that arrived after their window closed (sent to the late side output).
    pub late: u64,
    /// Inputs acked.
    pub acked: u64,
    /// Inputs requeued to the broker (a `Requeue` policy).
    pub requeued: u64,
    /// Inputs released unsettled (failure, drain timeout, abort): the broker redelivers them.
    pub abandoned: u64,
    /// Acks or nacks the broker refused (the input is redelivered).
    pub settle_errors: u64,
    /// Inputs held right now (received and not yet settled).
    pub in_flight: u64,
    /// The most inputs held at once since the start.
    pub in_flight_peak: u64,
    /// The configured bound on inputs held at once.
    pub max_in_flight: u64,
    /// Per-stage counters, in the order the stages were added.
    pub stages: Vec<StageSnapshot>,
}

impl Snapshot {
    /// The counters of the stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageSnapshot> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// One stage's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageSnapshot {
    /// The stage's name.
    pub name: String,
    /// Items that entered the stage.
    pub input: u64,
    /// Items the stage emitted.
    pub output: u64,
    /// Items it filtered out.
    pub filtered: u64,
    /// Failures (errors and panics), before the policy was applied.
    pub errors: u64,
    /// Retries.
    pub retried: u64,
    /// Items dead-lettered.
    pub dead_lettered: u64,
    /// Items skipped.
    pub skipped: u64,
}
