//! An exactly-once run: receive an input, transform it, send its outputs (or its dead letter)
//! in the open transaction, and commit every `max_batch` inputs or `commit_interval`; an
//! aborted transaction's inputs come again.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::{Error, ErrorKind, Result, TransactionInput};
use tokio::time::Instant;

use super::{ExactlyOnce, ExactlyOnceReport};
use crate::stage::panic_error;

/// The run's state between transactions.
#[derive(Default)]
struct Progress {
    report: ExactlyOnceReport,
    /// Dead letters in the open transaction (the unit counts them as outputs).
    dead_in_transaction: u64,
    aborts_in_a_row: u32,
}

/// How processing one input ended.
enum Processed {
    Done,
    /// The transaction cannot commit as it is (a send failed part-way through an input's
    /// outputs): abort it, then go on if `error` is temporary.
    Abort(Error),
}

impl ExactlyOnce {
    /// Run until an error stops it (a queue has no end).
    pub async fn run(self) -> ExactlyOnceReport {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Run until Ctrl-C (SIGINT), then commit the open transaction and report.
    pub async fn run_until_ctrl_c(self) -> ExactlyOnceReport {
        self.run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    }

    /// Run until `shutdown` resolves, then commit the open transaction, close the unit and
    /// report. A run stopped by an error aborts the open transaction instead.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> ExactlyOnceReport {
        let mut progress = Progress::default();
        let stopped = self.run_loop(shutdown, &mut progress).await;
        match stopped {
            Ok(()) => {
                if let Err(e) = self.commit(&mut progress).await {
                    progress.report.error = Some(e);
                }
            }
            Err(e) => {
                if let Err(abort) = self.unit.abort().await {
                    tracing::debug!(error = %abort, "abort after a stop failed");
                }
                progress.report.error = Some(e);
            }
        }
        if let Err(e) = self.unit.close().await {
            tracing::warn!(error = %e, "closing the transactional unit failed");
        }
        progress.report
    }

    async fn run_loop(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        progress: &mut Progress,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let mut commit_at: Option<Instant> = None;
        let mut receive_failures = 0u32;
        loop {
            let due = self.unit.pending().inputs >= self.max_batch
                || commit_at.is_some_and(|at| Instant::now() >= at);
            if due {
                commit_at = None;
                match self.commit(progress).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::Aborted => self.aborted(e, progress).await?,
                    Err(e) => return Err(e),
                }
                continue;
            }
            let received = tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep_until(commit_at.unwrap_or_else(Instant::now)), if commit_at.is_some() => continue,
                received = self.unit.receive() => received,
            };
            let input = match received {
                Ok(input) => {
                    receive_failures = 0;
                    input
                }
                Err(e) if e.kind() == ErrorKind::Closed => return Ok(()),
                Err(e) if e.is_temporary() && receive_failures < 10 => {
                    receive_failures += 1;
                    tracing::warn!(error = %e, receive_failures, "receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << receive_failures.min(6))).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            commit_at.get_or_insert_with(|| Instant::now() + self.commit_interval);
            match self.process(input, progress).await? {
                Processed::Done => {}
                Processed::Abort(e) => {
                    commit_at = None;
                    if !e.is_temporary() {
                        return Err(e);
                    }
                    self.unit.abort().await?;
                    progress.dead_in_transaction = 0;
                    self.aborted(e, progress).await?;
                }
            }
        }
    }

    /// Transform one input and add its outputs (or its dead letter) to the transaction.
    async fn process(
        &mut self,
        input: TransactionInput,
        progress: &mut Progress,
    ) -> Result<Processed> {
        let transform = &mut self.transform;
        let made = catch_unwind(AssertUnwindSafe(|| transform(&input)))
            .unwrap_or_else(|panic| Err(panic_error("transform", panic)));
        // Outputs the sink would refuse before any I/O fail this input alone, before any of
        // its outputs is in the transaction, so it can still be dead-lettered cleanly.
        let checked = made.and_then(|outputs| {
            for output in &outputs {
                self.sink_capabilities
                    .check_message(output, self.sink_backend, "send")?;
            }
            Ok(outputs)
        });
        let outputs = match checked {
            Ok(outputs) => outputs,
            Err(e) => return self.failed(input, e, progress).await,
        };
        for output in outputs {
            if let Err(e) = self.unit.send(&self.sink, output).await {
                return Ok(Processed::Abort(e));
            }
        }
        Ok(Processed::Done)
    }

    /// The transform failed on `input`: dead-letter it in the transaction, or stop.
    async fn failed(
        &mut self,
        input: TransactionInput,
        error: Error,
        progress: &mut Progress,
    ) -> Result<Processed> {
        let Some(dead_letter) = self.dead_letter.clone() else {
            return Err(Error::new(
                error.kind(),
                format!(
                    "the transform failed on input {} of '{}' and no dead-letter destination is \
                     set: {}",
                    input.message.id(),
                    self.queue,
                    error.message()
                ),
            )
            .set_temporary(false)
            .with_boxed_source(Box::new(error))
            .with_operation("exactly_once"));
        };
        let mut dead = input.message;
        stamp_dead_letter(
            &mut dead,
            &self.queue,
            &error.to_string(),
            input.info.attempt,
        );
        match self.unit.send(&dead_letter, dead).await {
            Ok(()) => {
                progress.dead_in_transaction += 1;
                Ok(Processed::Done)
            }
            Err(e) => Ok(Processed::Abort(e)),
        }
    }

    /// Commit the open transaction and count what it held.
    async fn commit(&mut self, progress: &mut Progress) -> Result<()> {
        let committed = self.unit.commit().await;
        let dead = std::mem::take(&mut progress.dead_in_transaction);
        let counts = committed?;
        if counts.inputs + counts.outputs > 0 {
            let report = &mut progress.report;
            report.commits += 1;
            report.inputs += counts.inputs as u64;
            report.outputs += (counts.outputs as u64).saturating_sub(dead);
            report.dead_lettered += dead;
        }
        progress.aborts_in_a_row = 0;
        Ok(())
    }

    /// A transaction was aborted (its inputs come again): back off, or stop after too many.
    async fn aborted(&mut self, error: Error, progress: &mut Progress) -> Result<()> {
        progress.report.aborts += 1;
        progress.aborts_in_a_row += 1;
        if progress.aborts_in_a_row >= self.max_aborts_in_a_row {
            return Err(error);
        }
        tracing::warn!(error = %error, aborts_in_a_row = progress.aborts_in_a_row, "transaction aborted; its inputs come again");
        let pause = Duration::from_millis(100 << progress.aborts_in_a_row.min(5));
        tokio::time::sleep(pause).await;
        Ok(())
    }
}
