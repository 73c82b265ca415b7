//! Configuring an exactly-once run, and the checks that its source and sink can share a
//! transaction (both declare `transactions`, and they are one cluster).

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::{
    Backend, Capability, Destination, Error, Message, Result, TransactionInput, TransactionOptions,
};

use super::{ExactlyOnce, ExactlyOnceTransform};

/// Configures an exactly-once pipeline: see the [module docs](crate::exactly_once).
pub struct ExactlyOnceBuilder {
    source: Arc<dyn Backend>,
    queue: String,
    options: TransactionOptions,
    sink: Option<(Arc<dyn Backend>, Destination)>,
    dead_letter: Option<Destination>,
    transform: ExactlyOnceTransform,
    max_batch: usize,
    commit_interval: Duration,
    max_aborts_in_a_row: u32,
}

impl ExactlyOnce {
    /// Start configuring a pipeline that consumes `queue` on `source` through a transactional
    /// unit opened with `options` (its id: one per instance, the same across restarts).
    pub fn builder(
        source: Arc<dyn Backend>,
        queue: impl Into<String>,
        options: TransactionOptions,
    ) -> ExactlyOnceBuilder {
        ExactlyOnceBuilder {
            source,
            queue: queue.into(),
            options,
            sink: None,
            dead_letter: None,
            transform: Box::new(|input| Ok(vec![input.message.clone()])),
            max_batch: 500,
            commit_interval: Duration::from_millis(100),
            max_aborts_in_a_row: 5,
        }
    }
}

impl ExactlyOnceBuilder {
    /// Where outputs go: `destination` on `backend`, which must be the source's cluster.
    pub fn sink(mut self, backend: Arc<dyn Backend>, destination: Destination) -> Self {
        self.sink = Some((backend, destination));
        self
    }

    /// Where inputs the transform fails on go, stamped with the reason, in the same
    /// transaction (so a dead letter is exactly-once too). Without one, such an input stops
    /// the pipeline.
    pub fn dead_letter(mut self, destination: Destination) -> Self {
        self.dead_letter = Some(destination);
        self
    }

    /// The transform (the default forwards each input unchanged).
    pub fn transform(
        mut self,
        f: impl FnMut(&TransactionInput) -> Result<Vec<Message>> + Send + 'static,
    ) -> Self {
        self.transform = Box::new(f);
        self
    }

    /// Most inputs per transaction (at least 1; default 500).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Longest a transaction stays open after its first input before it commits (default
    /// 100 ms): the latency every output pays, traded against the cost of a commit.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Aborted transactions in a row (failed deliveries, refused commits, failed sends) after
    /// which the pipeline stops with the last error instead of trying again (default 5).
    pub fn max_aborts_in_a_row(mut self, n: u32) -> Self {
        self.max_aborts_in_a_row = n.max(1);
        self
    }

    /// Check that the source and sink can share a transaction, then open the unit.
    ///
    /// `Config` without a sink; `Unsupported` (before any I/O) when the source or the sink
    /// does not declare `transactions`; `Config` when the sink is another broker, or another
    /// cluster, or a cluster whose identity cannot be told.
    pub async fn build(self) -> Result<ExactlyOnce> {
        let operation = "exactly_once";
        let Some((sink_backend, sink)) = self.sink else {
            return Err(Error::config(
                "an exactly-once pipeline needs a sink (ExactlyOnceBuilder::sink)",
            )
            .with_operation(operation));
        };
        for (role, backend) in [("source", &self.source), ("sink", &sink_backend)] {
            if !backend.capabilities().supports(Capability::Transactions) {
                return Err(Error::unsupported(format!(
                    "exactly-once needs transactions, and the {role} backend '{}' does not \
                     declare them; use a Pipeline (at least once) instead",
                    backend.name()
                ))
                .with_backend(backend.name())
                .with_operation(operation));
            }
        }
        if self.source.name() != sink_backend.name() {
            return Err(Error::config(format!(
                "exactly-once needs the sink on the source's cluster: the source is '{}' and the \
                 sink '{}', and one transaction cannot span two brokers",
                self.source.name(),
                sink_backend.name()
            ))
            .with_operation(operation));
        }
        if !Arc::ptr_eq(&self.source, &sink_backend) {
            let source_id = self.source.cluster_id().await?;
            let sink_id = sink_backend.cluster_id().await?;
            match (source_id, sink_id) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    let show = |id: Option<String>| id.unwrap_or_else(|| "unknown".to_owned());
                    return Err(Error::config(format!(
                        "exactly-once needs the sink on the source's cluster: the source is \
                         cluster {} and the sink cluster {}; one transaction cannot span two \
                         clusters (pass the same backend for both when in doubt)",
                        show(a),
                        show(b)
                    ))
                    .with_backend(self.source.name())
                    .with_operation(operation));
                }
            }
        }
        let unit = self.source.transactional(&self.queue, self.options).await?;
        Ok(ExactlyOnce {
            unit,
            queue: self.queue,
            sink,
            sink_capabilities: sink_backend.capabilities().clone(),
            sink_backend: sink_backend.name(),
            dead_letter: self.dead_letter,
            transform: self.transform,
            max_batch: self.max_batch,
            commit_interval: self.commit_interval,
            max_aborts_in_a_row: self.max_aborts_in_a_row,
        })
    }
}
