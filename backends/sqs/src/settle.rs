//! Settling SQS deliveries: ack deletes the message, nack changes its visibility (0, or the
//! requeue delay) or dead-letters a stamped copy (core's
//! [`republish`](mailroom_core::republish)) before deleting it; a dropped delivery is made
//! visible again at once.
//!
//! Deletes and visibility changes are queued to a settler task that batches them (ten to a
//! call, a few calls in flight), and a ticker extends the visibility of deliveries held long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use mailroom_core::operation::{ACK, NACK};
use mailroom_core::republish::{self, Republish};
use mailroom_core::{Error, ErrorKind, Message, Nack, Result, Settle};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::codec::{self, ceil_secs};
use crate::connection::Connection;
use crate::error::{context, from_entry, from_sdk};
use crate::producer::send_one;
use crate::{BACKEND, MAX_BATCH_ENTRIES, MAX_VISIBILITY};

/// Settle operations queued for the settler before a release falls back to its own call.
const SETTLE_QUEUE: usize = 4096;
/// Settle calls in flight at once.
const SETTLE_CONCURRENCY: usize = 4;

/// A settle operation on one received message.
enum Op {
    Delete,
    Visibility(i32),
    /// Answered once every operation queued before it has had its call.
    Flush,
}

struct SettleReq {
    op: Op,
    receipt: String,
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// What every delivery of one consumer settles against; it lives as long as the consumer or
/// any delivery.
pub(crate) struct SettleScope {
    pub connection: Arc<Connection>,
    pub queue: Arc<str>,
    pub url: Arc<str>,
    dlq_url: Option<Arc<str>>,
    settler: mpsc::Sender<SettleReq>,
    /// Receipt handles not yet settled, and when their visibility was last set.
    held: Mutex<HashMap<u64, (String, Instant)>>,
    next: AtomicU64,
    /// Set when the consumer is closed or dropped: from then on no `close` is left to wait
    /// for queued settles, so each one waits for its own call.
    pub consumer_gone: AtomicBool,
}

impl SettleScope {
    /// The scope of a consumer of `queue`, with its settler and visibility extender running.
    pub fn open(
        connection: Arc<Connection>,
        queue: &str,
        url: Arc<str>,
        dlq_url: Option<Arc<str>>,
        visibility: Duration,
    ) -> Arc<Self> {
        let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE);
        let scope = Arc::new(SettleScope {
            connection: connection.clone(),
            queue: Arc::from(queue),
            url: url.clone(),
            dlq_url,
            settler: settle_tx,
            held: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            consumer_gone: AtomicBool::new(false),
        });
        tokio::spawn(run_settler(connection, url, settle_rx));
        tokio::spawn(run_extender(Arc::downgrade(&scope), visibility));
        scope
    }

    /// The settle handle of a message just received, its receipt held (and extended) until it
    /// is settled.
    pub fn track(self: &Arc<Self>, receipt: String, message: Message, attempt: u32) -> SqsSettle {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.held().insert(token, (receipt.clone(), Instant::now()));
        SqsSettle {
            scope: self.clone(),
            token,
            receipt: Some(receipt),
            message,
            attempt,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, Instant)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a delete or a visibility change for the settler's next batch call; waits only
    /// while the settler's queue is full.
    ///
    /// Not for the call's answer: a settle that waited for its own call made a consumer that
    /// acks one message at a time pay a round trip per message, and send one delete per call
    /// (measured at 0.16 of the raw client's rate). A call that fails is logged, and its
    /// messages come back when their visibility runs out: a duplicate later, never a loss.
    ///
    /// After the consumer is closed (a pipeline draining its last deliveries, say) nothing
    /// would wait for a queued call before the process exits, so the settle waits for its own
    /// call and returns its answer.
    async fn settle(&self, op: Op, receipt: String, operation: &'static str) -> Result<()> {
        // SeqCst pairs with the store in `shut`: if the second load below still reads false,
        // the store (and so close's flush) comes after this request in the channel.
        if self.consumer_gone.load(Ordering::SeqCst) {
            let (reply, answer) = oneshot::channel();
            let req = SettleReq {
                op,
                receipt,
                reply: Some(reply),
            };
            if self.settler.send(req).await.is_err() {
                return Err(context(Error::closed("the settle task stopped"), operation));
            }
            return answer.await.unwrap_or_else(|_| {
                Err(context(
                    Error::closed("the settle task stopped before answering"),
                    operation,
                ))
            });
        }
        let req = SettleReq {
            op,
            receipt,
            reply: None,
        };
        if self.settler.send(req).await.is_err() {
            return Err(context(Error::closed("the settle task stopped"), operation));
        }
        // Closed while this was queued, maybe after close's flush went by: wait here instead.
        if self.consumer_gone.load(Ordering::SeqCst) {
            self.flush().await;
        }
        Ok(())
    }

    /// Wait until every settle queued so far has had its call.
    pub async fn flush(&self) {
        let (reply, answer) = oneshot::channel();
        let req = SettleReq {
            op: Op::Flush,
            receipt: String::new(),
            reply: Some(reply),
        };
        // A settler that is gone has nothing queued.
        if self.settler.send(req).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// Make a message visible again at once, without waiting (drop paths).
    pub fn release(&self, receipt: String) {
        let req = SettleReq {
            op: Op::Visibility(0),
            receipt,
            reply: None,
        };
        if let Err(e) = self.settler.try_send(req) {
            let req = e.into_inner();
            // Full or gone: one call of its own, if a runtime is there to run it. Without one
            // the visibility timeout brings the message back anyway.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let client = self.connection.client.clone();
                let url = self.url.clone();
                handle.spawn(async move {
                    let _ = client
                        .change_message_visibility()
                        .queue_url(url.as_ref())
                        .receipt_handle(req.receipt)
                        .visibility_timeout(0)
                        .send()
                        .await;
                });
            }
        }
    }
}

/// The backend side of one delivery.
pub(crate) struct SqsSettle {
    scope: Arc<SettleScope>,
    token: u64,
    receipt: Option<String>,
    message: Message,
    attempt: u32,
}

impl SqsSettle {
    fn take(&mut self) -> Option<String> {
        self.scope.held().remove(&self.token);
        self.receipt.take()
    }
}

#[async_trait]
impl Settle for SqsSettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        let Some(receipt) = self.take() else {
            return Ok(());
        };
        self.scope.settle(Op::Delete, receipt, ACK).await
    }

    async fn nack(mut self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay } => {
                let secs = delay.map_or(0, ceil_secs);
                if secs > MAX_VISIBILITY.as_secs() {
                    // The delivery is released at once by drop; the error says why.
                    return Err(context(
                        Error::invalid_input(format!(
                            "requeue delay of {delay:?} exceeds SQS's maximum visibility timeout \
                             of {MAX_VISIBILITY:?}"
                        )),
                        NACK,
                    ));
                }
                let Some(receipt) = self.take() else {
                    return Ok(());
                };
                self.scope
                    .settle(Op::Visibility(secs as i32), receipt, NACK)
                    .await
            }
            Nack::DeadLetter { reason } => {
                let scope = self.scope.clone();
                let message = self.message.clone();
                let attempt = self.attempt;
                let dead_letter_queue = scope.dlq_url.as_deref();
                // On failure the delivery is released by drop: nothing is lost.
                republish::dead_letter(
                    &mut *self,
                    dead_letter_queue,
                    &message,
                    &scope.queue,
                    &reason,
                    attempt,
                )
                .await
            }
        }
    }

    fn abandon(self: Box<Self>) {
        drop(self);
    }
}

impl Republish for SqsSettle {
    async fn publish_copy(
        &mut self,
        url: &str,
        message: Message,
        _attempt: Option<u32>,
    ) -> Result<()> {
        let connection = &self.scope.connection;
        let max_size = connection.config.max_message_size;
        let encoded = codec::encode(&message, url.ends_with(".fifo"), max_size)
            .map_err(|e| context(e, NACK))?;
        send_one(connection, url, encoded, NACK).await.map(|_| ())
    }

    async fn settle_original(&mut self) -> Result<()> {
        let Some(receipt) = self.take() else {
            return Ok(());
        };
        self.scope.settle(Op::Delete, receipt, NACK).await
    }
}

impl Drop for SqsSettle {
    fn drop(&mut self) {
        if let Some(receipt) = self.take() {
            self.scope.release(receipt);
        }
    }
}

/// Batch deletes and visibility changes of one queue, a few calls in flight at once.
async fn run_settler(
    connection: Arc<Connection>,
    url: Arc<str>,
    mut rx: mpsc::Receiver<SettleReq>,
) {
    let calls = Arc::new(Semaphore::new(SETTLE_CONCURRENCY));
    loop {
        let Ok(call) = calls.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut deletes = Vec::new();
        let mut changes = Vec::new();
        let mut flushes = Vec::new();
        let mut push = |r: SettleReq| match r.op {
            Op::Delete => deletes.push(r),
            Op::Visibility(_) => changes.push(r),
            Op::Flush => flushes.push(r),
        };
        push(first);
        let mut n = 1;
        while n < MAX_BATCH_ENTRIES * 2 {
            match rx.try_recv() {
                Ok(r) => {
                    push(r);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let connection = connection.clone();
        let url = url.clone();
        tokio::spawn(async move {
            for chunk in chunks(deletes) {
                delete_batch(&connection, &url, chunk).await;
            }
            for chunk in chunks(changes) {
                visibility_batch(&connection, &url, chunk).await;
            }
            drop(call);
        });
        if !flushes.is_empty() {
            // Everything queued before the flush is in a call by now: holding every call
            // permit means those calls have finished.
            if let Ok(all) = calls
                .clone()
                .acquire_many_owned(SETTLE_CONCURRENCY as u32)
                .await
            {
                drop(all);
            }
            for mut f in flushes {
                if let Some(reply) = f.reply.take() {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }
}

fn chunks(mut reqs: Vec<SettleReq>) -> Vec<Vec<SettleReq>> {
    let mut out = Vec::new();
    while !reqs.is_empty() {
        let rest = reqs.split_off(reqs.len().min(MAX_BATCH_ENTRIES));
        out.push(std::mem::replace(&mut reqs, rest));
    }
    out
}

fn reply_all(reqs: &mut [SettleReq], err: &Error) {
    if reqs.iter().any(|r| r.reply.is_none()) {
        tracing::warn!(error = %err, entries = reqs.len(), "a settle call failed; its messages come back when their visibility runs out");
    }
    for r in reqs.iter_mut() {
        if let Some(reply) = r.reply.take() {
            let e = Error::new(err.kind(), err.message())
                .set_temporary(err.is_temporary())
                .with_backend(BACKEND)
                .with_operation(err.operation().unwrap_or("settle"));
            let _ = reply.send(Err(e));
        }
    }
}

fn reply_results(
    reqs: &mut [SettleReq],
    ok: impl Iterator<Item = String>,
    failed: &[BatchResultErrorEntry],
    operation: &'static str,
) {
    let failed = failed.iter().map(|f| {
        let err = from_entry(f.code(), f.message(), f.sender_fault(), operation);
        (f.id().to_owned(), err)
    });
    for id in ok {
        if let Some(r) = id.parse::<usize>().ok().and_then(|i| reqs.get_mut(i)) {
            if let Some(reply) = r.reply.take() {
                let _ = reply.send(Ok(()));
            }
        }
    }
    for (id, err) in failed {
        if let Some(r) = id.parse::<usize>().ok().and_then(|i| reqs.get_mut(i)) {
            match r.reply.take() {
                Some(reply) => {
                    let _ = reply.send(Err(err));
                }
                None => {
                    tracing::warn!(error = %err, "settling a message failed; it comes back when its visibility runs out")
                }
            }
        }
    }
    // An entry SQS named in neither list: its outcome is unknown, so it is not called done.
    for r in reqs.iter_mut() {
        if let Some(reply) = r.reply.take() {
            let _ = reply.send(Err(Error::new(
                ErrorKind::Broker,
                "SQS answered the batch call without naming this entry",
            )
            .with_backend(BACKEND)
            .with_operation("settle")));
        }
    }
}

async fn delete_batch(connection: &Connection, url: &str, mut reqs: Vec<SettleReq>) {
    let entries: Vec<_> = reqs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r.receipt.clone())
                .build()
                .ok()
        })
        .collect();
    match connection
        .client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            let ok = out.successful().iter().map(|s| s.id().to_owned());
            reply_results(&mut reqs, ok, out.failed(), ACK)
        }
        Err(e) => reply_all(&mut reqs, &from_sdk(e, ACK)),
    }
}

async fn visibility_batch(connection: &Connection, url: &str, mut reqs: Vec<SettleReq>) {
    let entries: Vec<_> = reqs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let secs = match r.op {
                Op::Visibility(s) => s,
                Op::Delete | Op::Flush => 0,
            };
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r.receipt.clone())
                .visibility_timeout(secs)
                .build()
                .ok()
        })
        .collect();
    match connection
        .client
        .change_message_visibility_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            let ok = out.successful().iter().map(|s| s.id().to_owned());
            reply_results(&mut reqs, ok, out.failed(), NACK)
        }
        Err(e) => reply_all(&mut reqs, &from_sdk(e, NACK)),
    }
}

/// Extend the visibility of deliveries held longer than half the visibility timeout, so long
/// processing is not redelivered under the handler's feet. Stops when the consumer and all its
/// deliveries are gone.
async fn run_extender(scope: Weak<SettleScope>, visibility: Duration) {
    if visibility < Duration::from_secs(2) {
        // Too short to extend usefully; such a queue chose quick redelivery.
        return;
    }
    let period = visibility / 4;
    let secs = visibility.as_secs() as i32;
    loop {
        tokio::time::sleep(period).await;
        let Some(scope) = scope.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<String> = {
            let mut held = scope.held();
            held.values_mut()
                .filter(|(_, since)| now.duration_since(*since) >= visibility / 2)
                .map(|(receipt, since)| {
                    *since = now;
                    receipt.clone()
                })
                .collect()
        };
        for receipt in due {
            let req = SettleReq {
                op: Op::Visibility(secs),
                receipt,
                reply: None,
            };
            if scope.settler.try_send(req).is_err() {
                break;
            }
        }
    }
}
