//! Retry of sends that failed for a temporary reason, with the message the error handed back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Layer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::{Destination, PendingConfirm, Producer, Receipt};

/// The default wait before the first retry.
pub const DEFAULT_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The default longest wait between two tries.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);
/// The default number of retries after the first try.
pub const DEFAULT_RETRIES: u32 = 5;

/// How long to wait between tries, and how many to make: the wait doubles from `first` up to
/// `max`, for at most `retries` retries after the first try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    retries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: DEFAULT_FIRST_DELAY,
            max: DEFAULT_MAX_DELAY,
            retries: DEFAULT_RETRIES,
        }
    }
}

impl Backoff {
    /// Waits doubling from `first` to at most `max`, for `retries` retries.
    pub fn new(first: Duration, max: Duration, retries: u32) -> Self {
        Backoff {
            first,
            max: max.max(first),
            retries,
        }
    }

    /// Retries after the first try.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The total wait if every retry is made: the bound a send's retries add to it.
    pub fn total(&self) -> Duration {
        (1..=self.retries).map(|r| self.delay(r)).sum()
    }
}

/// Sends again, after a [`Backoff`], a message whose send failed with a temporary error
/// ([`Error::is_temporary`]) that handed the message back ([`Error::undelivered`]): the
/// message is taken out of the error, never cloned. A permanent error, one without its message,
/// or the last retry's error is returned as it is.
///
/// Both refusals (`enqueue` failing) and failed confirms are retried; a confirm that is already
/// known costs nothing extra, one still to come is wrapped to retry it when it fails. A retried
/// message is sent after the ones handed over since, so retries can reorder messages (as any
/// retry by the caller would). `enqueue_batch` and `send_batch` go to the backend as batches;
/// only their failed messages are retried, one by one. Receiving is not touched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryLayer {
    backoff: Backoff,
}

impl RetryLayer {
    /// Retry with the default backoff: from [`DEFAULT_FIRST_DELAY`], doubling to
    /// [`DEFAULT_MAX_DELAY`], [`DEFAULT_RETRIES`] times.
    pub fn new() -> Self {
        RetryLayer::default()
    }

    /// Retry with this backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

impl Layer for RetryLayer {
    fn name(&self) -> &'static str {
        "retry"
    }

    fn producer(&self, _backend: &dyn Backend, producer: Box<dyn Producer>) -> Box<dyn Producer> {
        Box::new(RetryProducer {
            inner: Arc::from(producer),
            backoff: self.backoff,
        })
    }
}

struct RetryProducer {
    // Shared with confirms still to come, which resend through it.
    inner: Arc<dyn Producer>,
    backoff: Backoff,
}

/// The message to send again, if `error` allows a retry number `retry`.
fn retriable(error: &mut Error, backoff: &Backoff, retry: u32) -> Option<Message> {
    if retry > backoff.retries() || !error.is_temporary() {
        return None;
    }
    error.take_undelivered()
}

/// Send `message`, already tried `tries` times, until it is confirmed or may not be retried.
async fn resend(
    inner: &dyn Producer,
    backoff: Backoff,
    destination: &Destination,
    mut message: Message,
    mut tries: u32,
) -> Result<Receipt> {
    loop {
        tokio::time::sleep(backoff.delay(tries)).await;
        tries += 1;
        let result = match inner.enqueue(destination, message).await {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(receipt) => return Ok(receipt),
            Err(mut e) => match retriable(&mut e, &backoff, tries) {
                Some(m) => message = m,
                None => return Err(e),
            },
        }
    }
}

impl RetryProducer {
    /// A confirm that retries when it fails; one already known is settled here, unboxed.
    async fn watch(
        &self,
        destination: &Destination,
        mut confirm: PendingConfirm,
        tries: u32,
    ) -> PendingConfirm {
        match confirm.take_if_ready() {
            Some(Ok(receipt)) => PendingConfirm::ready(Ok(receipt)),
            Some(Err(mut e)) => match retriable(&mut e, &self.backoff, tries) {
                Some(message) => PendingConfirm::ready(
                    resend(&*self.inner, self.backoff, destination, message, tries).await,
                ),
                None => PendingConfirm::ready(Err(e)),
            },
            None => {
                let (inner, backoff, destination) =
                    (self.inner.clone(), self.backoff, destination.clone());
                PendingConfirm::waiting(async move {
                    match confirm.await {
                        Ok(receipt) => Ok(receipt),
                        Err(mut e) => match retriable(&mut e, &backoff, tries) {
                            Some(m) => resend(&*inner, backoff, &destination, m, tries).await,
                            None => Err(e),
                        },
                    }
                })
            }
        }
    }

    /// The outcome of a first enqueue, retried where it failed.
    async fn settle_enqueue(
        &self,
        destination: &Destination,
        result: Result<PendingConfirm>,
    ) -> Result<PendingConfirm> {
        match result {
            Ok(confirm) => Ok(self.watch(destination, confirm, 1).await),
            Err(mut e) => match retriable(&mut e, &self.backoff, 1) {
                Some(message) => Ok(PendingConfirm::ready(
                    resend(&*self.inner, self.backoff, destination, message, 1).await,
                )),
                None => Err(e),
            },
        }
    }
}

#[async_trait]
impl Producer for RetryProducer {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        let first = self.inner.enqueue(destination, message).await;
        self.settle_enqueue(destination, first).await
    }

    async fn enqueue_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        pending: &mut Vec<Result<PendingConfirm>>,
    ) {
        let start = pending.len();
        self.inner
            .enqueue_batch(destination, messages, pending)
            .await;
        for slot in &mut pending[start..] {
            if let Ok(confirm) = slot {
                match confirm.take_if_ready() {
                    // Known and fine: put it back as it was, allocation-free.
                    Some(Ok(receipt)) => {
                        *confirm = PendingConfirm::ready(Ok(receipt));
                        continue;
                    }
                    Some(Err(e)) => *confirm = PendingConfirm::ready(Err(e)),
                    None => {}
                }
            }
            let first = std::mem::replace(slot, Err(super::stand_in()));
            *slot = self.settle_enqueue(destination, first).await;
        }
    }

    async fn send(&self, destination: &Destination, message: Message) -> Result<Receipt> {
        // The backend's own `send` (often cheaper than enqueue + confirm) makes the first try.
        match self.inner.send(destination, message).await {
            Ok(receipt) => Ok(receipt),
            Err(mut e) => match retriable(&mut e, &self.backoff, 1) {
                Some(m) => resend(&*self.inner, self.backoff, destination, m, 1).await,
                None => Err(e),
            },
        }
    }

    async fn send_batch(
        &self,
        destination: &Destination,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Receipt>>> {
        let mut results = self.inner.send_batch(destination, messages).await?;
        for result in &mut results {
            if let Err(e) = result {
                if let Some(m) = retriable(e, &self.backoff, 1) {
                    *result = resend(&*self.inner, self.backoff, destination, m, 1).await;
                }
            }
        }
        Ok(results)
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests;
