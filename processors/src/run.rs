//! Running a pipeline: until its sources end, until a shutdown signal, or in the background
//! with a handle; draining on shutdown and reporting what could not be finished.

use mailroom_core::Error;
use std::future::Future;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::flow::{Pipeline, StoppedSources};
use crate::metrics::{Metrics, Snapshot};

/// What a pipeline run did and how it ended.
#[derive(Debug)]
pub struct Report {
    /// The counters at the end.
    pub metrics: Snapshot,
    /// The error that stopped the pipeline (a stage with the `Fail` policy, a source error).
    pub error: Option<Error>,
    /// Whether the drain after a shutdown signal, or the settling and closing after it, ran
    /// out of time.
    pub timed_out: bool,
    /// Inputs released unsettled during the run, which the broker redelivers: those held when
    /// the drain timed out or a stage failed the pipeline, and those whose settle had not run,
    /// or not finished, when settling timed out (an ack cancelled midway may have reached the
    /// broker: then nothing comes back, else a duplicate, never a loss).
    pub unfinished: u64,
}

impl Report {
    /// The report, or the error that stopped the pipeline.
    pub fn into_result(self) -> Result<Report, Error> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

impl Pipeline {
    /// The pipeline's live counters.
    pub fn metrics(&self) -> Metrics {
        self.parts.metrics.clone()
    }

    /// Run until every source has ended (or a stage fails the pipeline).
    pub async fn run(self) -> Report {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Run until `shutdown` resolves, then stop intake, drain what is in flight (flushing
    /// batches and open windows) within the drain timeout, and report. Settling what the
    /// drain finished and closing the sources then get one more drain timeout, so a broker
    /// that stops answering holds a shutdown for at most twice the drain timeout.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Report {
        let Pipeline { mut parts, drive } = self;
        let metrics = parts.metrics.clone();
        let released_before = metrics.snapshot().abandoned;
        let settler = parts.settle_rx.take().map(|mut rx| {
            tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    job.run_in_settler().await;
                }
            })
        });
        let mut drive = tracing::Instrument::instrument(drive, tracing::info_span!("pipeline"));
        let mut ticker = parts.log_every.map(|d| {
            let mut t = tokio::time::interval(d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        tokio::pin!(shutdown);
        let mut timed_out = false;
        let mut stopping = false;
        let mut deadline = None;
        let result = loop {
            tokio::select! {
                result = &mut drive => break result,
                _ = &mut shutdown, if !stopping => {
                    stopping = true;
                    tracing::info!(in_flight = metrics.in_flight(), "shutdown: stopping intake and draining");
                    let _ = parts.stop.send(true);
                    deadline = Some(tokio::time::Instant::now() + parts.drain_timeout);
                }
                _ = async {
                    match ticker.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    log_snapshot(&metrics.snapshot());
                    metrics.publish();
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    timed_out = true;
                    break Ok(());
                }
            }
        };
        // Dropping the driver releases every input it still holds, unsettled.
        drop(drive);
        let _ = parts.stop.send(true);
        let stopped = parts.stopped.clone();
        let tail = tokio::time::Instant::now() + parts.drain_timeout;
        drop(parts);
        if let Some(mut settler) = settler {
            if tokio::time::timeout_at(tail, &mut settler).await.is_err() {
                // The settles it had not run are dropped with it: their inputs are released
                // unsettled, and redelivered.
                settler.abort();
                let _ = settler.await;
                timed_out = true;
                tracing::warn!("settling timed out; the broker is not answering acks");
            }
        }
        // Every settle has been made by now; closing lets a backend finish the acks it batched.
        close_stopped(&stopped, tail).await;
        let snapshot = metrics.snapshot();
        let unfinished = snapshot.abandoned.saturating_sub(released_before);
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                timed_out,
                "inputs released unsettled; the broker will redeliver them"
            );
        }
        log_snapshot(&snapshot);
        metrics.publish();
        Report {
            metrics: snapshot,
            error: result.err(),
            timed_out,
            unfinished,
        }
    }

    /// Run until Ctrl-C (SIGINT), then drain and report.
    pub async fn run_until_ctrl_c(self) -> Report {
        self.run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    }

    /// Run in a background task.
    pub fn spawn(self) -> PipelineHandle {
        let metrics = self.metrics();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        PipelineHandle {
            metrics,
            shutdown: Some(tx),
            join,
        }
    }
}

fn log_snapshot(s: &Snapshot) {
    tracing::info!(
        received = s.received,
        out = s.out,
        filtered = s.filtered,
        retried = s.retried,
        dead_lettered = s.dead_lettered,
        skipped = s.skipped,
        late = s.late,
        acked = s.acked,
        in_flight = s.in_flight,
        "pipeline counters"
    );
}

/// A pipeline running in the background.
pub struct PipelineHandle {
    metrics: Metrics,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: JoinHandle<Report>,
}

impl PipelineHandle {
    /// The live counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the pipeline has stopped (its sources ended, or it failed).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Stop intake, drain, and return the report.
    pub async fn shutdown(mut self) -> Result<Report, Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join().await
    }

    /// Wait for the pipeline to end by itself.
    pub async fn join(self) -> Result<Report, Error> {
        self.join.await.map_err(|e| {
            Error::new(
                mailroom_core::ErrorKind::Closed,
                format!("pipeline task ended abnormally: {e}"),
            )
        })
    }

    /// Stop at once, as a crash would: nothing is drained; every input not yet settled is
    /// released unsettled and redelivered by the broker.
    pub async fn abort(self) {
        self.join.abort();
        let _ = self.join.await;
        // Let the settler (a separate task) settle what was already finished.
        tokio::task::yield_now().await;
    }
}

/// Close the sources whose intake stopped, all at once, by `deadline`.
async fn close_stopped(stopped: &StoppedSources, deadline: Instant) {
    let consumers = std::mem::take(&mut *stopped.lock().unwrap_or_else(|p| p.into_inner()));
    let closes = consumers.into_iter().map(|mut consumer| async move {
        match tokio::time::timeout_at(deadline, consumer.close()).await {
            Ok(Ok(())) => {}
            // Inputs it did not settle come back to the next consumer: duplicates, no loss.
            Ok(Err(e)) => tracing::warn!(error = %e, "closing a source failed"),
            Err(_) => tracing::warn!("closing a source timed out"),
        }
    });
    futures_util::future::join_all(closes).await;
}
