//! The consumer: a long-polling task filling a prefetch buffer, a settler task batching deletes
//! and visibility changes, and a ticker extending the visibility of deliveries held long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::{
    Consumer, ConsumerOptions, Delivery, DeliveryInfo, Error, ErrorKind, Message, Nack, Result,
    Settle,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::backend::Shared;
use crate::codec::{self, ceil_secs};
use crate::error::{ctx, from_entry, from_sdk};
use crate::producer::send_one;
use crate::{BACKEND, MAX_BATCH_ENTRIES, MAX_VISIBILITY};

/// Deliveries buffered ahead of `receive` when the options name no prefetch.
const DEFAULT_PREFETCH: u32 = 10;
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

/// What a consumer's deliveries share; it lives as long as the consumer or any delivery.
struct Control {
    shared: Arc<Shared>,
    queue: Arc<str>,
    url: Arc<str>,
    dlq_url: Option<Arc<str>>,
    settler: mpsc::Sender<SettleReq>,
    /// Receipt handles not yet settled, and when their visibility was last set.
    held: Mutex<HashMap<u64, (String, Instant)>>,
    next: AtomicU64,
    /// Set when the consumer is closed or dropped: from then on no `close` is left to wait
    /// for queued settles, so each one waits for its own call.
    consumer_gone: AtomicBool,
}

impl Control {
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
                return Err(ctx(Error::closed("the settle task stopped"), operation));
            }
            return answer.await.unwrap_or_else(|_| {
                Err(ctx(
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
            return Err(ctx(Error::closed("the settle task stopped"), operation));
        }
        // Closed while this was queued, maybe after close's flush went by: wait here instead.
        if self.consumer_gone.load(Ordering::SeqCst) {
            self.flush().await;
        }
        Ok(())
    }

    /// Wait until every settle queued so far has had its call.
    async fn flush(&self) {
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
    fn release(&self, receipt: String) {
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
                let client = self.shared.client.clone();
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
struct SqsSettle {
    control: Arc<Control>,
    token: u64,
    receipt: Option<String>,
    message: Message,
    attempt: u32,
}

impl SqsSettle {
    fn take(&mut self) -> Option<String> {
        self.control.held().remove(&self.token);
        self.receipt.take()
    }
}

#[async_trait]
impl Settle for SqsSettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        let Some(receipt) = self.take() else {
            return Ok(());
        };
        self.control.settle(Op::Delete, receipt, "ack").await
    }

    async fn nack(mut self: Box<Self>, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay } => {
                let secs = delay.map_or(0, ceil_secs);
                if secs > MAX_VISIBILITY.as_secs() {
                    // The delivery is released at once by drop; the error says why.
                    return Err(ctx(
                        Error::invalid_input(format!(
                            "requeue delay of {delay:?} exceeds SQS's maximum visibility timeout \
                             of {MAX_VISIBILITY:?}"
                        )),
                        "nack",
                    ));
                }
                let Some(receipt) = self.take() else {
                    return Ok(());
                };
                self.control
                    .settle(Op::Visibility(secs as i32), receipt, "nack")
                    .await
            }
            Nack::DeadLetter { reason } => {
                let control = self.control.clone();
                if let Some(dlq) = &control.dlq_url {
                    let mut dead = self.message.clone();
                    stamp_dead_letter(&mut dead, &control.queue, &reason, self.attempt);
                    let encoded = codec::encode(
                        &dead,
                        dlq.ends_with(".fifo"),
                        control.shared.config.max_message_size,
                    )
                    .map_err(|e| ctx(e, "nack"))?;
                    // On failure the delivery is released by drop: nothing is lost.
                    send_one(&control.shared, dlq, encoded, "nack").await?;
                } else {
                    tracing::warn!(
                        queue = %control.queue,
                        id = %self.message.id(),
                        %reason,
                        "dead-lettered message discarded: the queue has no dead-letter queue"
                    );
                }
                let Some(receipt) = self.take() else {
                    return Ok(());
                };
                control.settle(Op::Delete, receipt, "nack").await
            }
        }
    }

    fn abandon(self: Box<Self>) {
        drop(self);
    }
}

impl Drop for SqsSettle {
    fn drop(&mut self) {
        if let Some(receipt) = self.take() {
            self.control.release(receipt);
        }
    }
}

/// One received message on its way to `receive`, with its prefetch credit.
struct Received {
    delivery: Result<Delivery>,
    _credit: OwnedSemaphorePermit,
}

/// Receives from one SQS queue.
pub struct SqsConsumer {
    queue: String,
    /// Kept so that `close` can wait for the settles queued so far.
    control: Arc<Control>,
    rx: mpsc::Receiver<Received>,
    stop: Arc<AtomicBool>,
    closed: bool,
}

impl SqsConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<Self> {
        let op = "consumer";
        let url = shared.queue_url(queue, op).await?;
        let attrs = shared
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| from_sdk(e, op))?;
        let attr =
            |name: QueueAttributeName| attrs.attributes().and_then(|a| a.get(&name)).cloned();
        let visibility = shared.config.visibility_timeout.unwrap_or_else(|| {
            Duration::from_secs(
                attr(QueueAttributeName::VisibilityTimeout)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30),
            )
        });
        let dlq_url = match attr(QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .and_then(|p| p.get("deadLetterTargetArn")?.as_str().map(str::to_owned))
        {
            Some(arn) => {
                let name = arn.rsplit(':').next().unwrap_or_default();
                match shared.queue_url(name, op).await {
                    Ok(u) => Some(Arc::from(u.as_str())),
                    Err(e) => {
                        tracing::warn!(queue, error = %e, "dead-letter queue not found");
                        None
                    }
                }
            }
            None => None,
        };
        let prefetch = options.prefetch.unwrap_or(DEFAULT_PREFETCH).max(1) as usize;
        let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE);
        let url: Arc<str> = Arc::from(url.as_str());
        let control = Arc::new(Control {
            shared: shared.clone(),
            queue: Arc::from(queue),
            url: url.clone(),
            dlq_url,
            settler: settle_tx,
            held: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            consumer_gone: AtomicBool::new(false),
        });
        tokio::spawn(run_settler(shared.clone(), url, settle_rx));
        tokio::spawn(run_extender(Arc::downgrade(&control), visibility));
        let (tx, rx) = mpsc::channel(prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        tokio::spawn(run_poller(control.clone(), tx, prefetch, stop.clone()));
        Ok(SqsConsumer {
            queue: queue.to_owned(),
            control,
            rx,
            stop,
            closed: false,
        })
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    fn shut(&mut self) {
        self.closed = true;
        self.control.consumer_gone.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::Release);
        self.rx.close();
        // Buffered deliveries are released (visibility 0) as they drop.
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        self.shut();
    }
}

impl std::fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsConsumer")
            .field("queue", &self.queue)
            .field("closed", &self.closed)
            .finish()
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        if self.closed {
            return Err(mailroom_core::consumer::closed_consumer(BACKEND));
        }
        match self.rx.recv().await {
            Some(r) => r.delivery,
            None => Err(mailroom_core::consumer::closed_consumer(BACKEND)),
        }
    }

    /// Stops receiving, then waits until the acks and nacks made so far have had their calls.
    async fn close(&mut self) -> Result<()> {
        self.shut();
        self.control.flush().await;
        Ok(())
    }
}

/// Long-poll for as many messages as there is prefetch room for, until the consumer goes away.
async fn run_poller(
    control: Arc<Control>,
    tx: mpsc::Sender<Received>,
    prefetch: usize,
    stop: Arc<AtomicBool>,
) {
    let shared = control.shared.clone();
    let credits = Arc::new(Semaphore::new(prefetch));
    let wait = shared.config.wait_time.as_secs().min(20) as i32;
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            c = credits.clone().acquire_owned() => match c { Ok(c) => c, Err(_) => return },
            _ = tx.closed() => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ENTRIES {
            match credits.clone().try_acquire_owned() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if stop.load(Ordering::Acquire) || shared.is_closed() {
            return;
        }
        let mut request = shared
            .client
            .receive_message()
            .queue_url(control.url.as_ref())
            .max_number_of_messages(batch.len() as i32)
            .wait_time_seconds(wait)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId);
        if let Some(v) = shared.config.visibility_timeout {
            request = request.visibility_timeout(v.as_secs() as i32);
        }
        match request.send().await {
            Ok(out) => {
                failures = 0;
                for msg in out.messages() {
                    let Some(receipt) = msg.receipt_handle().map(str::to_owned) else {
                        continue;
                    };
                    let Some(credit) = batch.pop() else {
                        // More than asked for: give it back rather than overfill the buffer.
                        control.release(receipt);
                        continue;
                    };
                    let message = codec::decode(msg);
                    let attempt = codec::receive_count(msg);
                    let token = control.next.fetch_add(1, Ordering::Relaxed);
                    control
                        .held()
                        .insert(token, (receipt.clone(), Instant::now()));
                    let mut info = DeliveryInfo::new(control.queue.as_ref());
                    info.attempt = attempt;
                    info.redelivered = attempt > 1;
                    let settle = SqsSettle {
                        control: control.clone(),
                        token,
                        receipt: Some(receipt),
                        message: message.clone(),
                        attempt,
                    };
                    let delivery = Delivery::new(message, info, Box::new(settle));
                    // If the consumer is gone, the delivery drops here and is released.
                    let _ = tx.try_send(Received {
                        delivery: Ok(delivery),
                        _credit: credit,
                    });
                }
            }
            Err(e) => {
                let err = from_sdk(e, "receive");
                let fatal = err.kind() == ErrorKind::NotFound || !err.is_temporary();
                if let Some(credit) = batch.pop() {
                    let _ = tx.try_send(Received {
                        delivery: Err(err),
                        _credit: credit,
                    });
                }
                if fatal {
                    return;
                }
                failures += 1;
                let backoff = Duration::from_millis(100 << failures.min(6));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Batch deletes and visibility changes of one queue, a few calls in flight at once.
async fn run_settler(shared: Arc<Shared>, url: Arc<str>, mut rx: mpsc::Receiver<SettleReq>) {
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
        let shared = shared.clone();
        let url = url.clone();
        tokio::spawn(async move {
            for chunk in chunks(deletes) {
                delete_batch(&shared, &url, chunk).await;
            }
            for chunk in chunks(changes) {
                visibility_batch(&shared, &url, chunk).await;
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
    failed: impl Iterator<Item = (String, Error)>,
) {
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

async fn delete_batch(shared: &Shared, url: &str, mut reqs: Vec<SettleReq>) {
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
    match shared
        .client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => reply_results(
            &mut reqs,
            out.successful().iter().map(|s| s.id().to_owned()),
            out.failed().iter().map(|f| {
                (
                    f.id().to_owned(),
                    from_entry(f.code(), f.message(), f.sender_fault(), "ack"),
                )
            }),
        ),
        Err(e) => reply_all(&mut reqs, &from_sdk(e, "ack")),
    }
}

async fn visibility_batch(shared: &Shared, url: &str, mut reqs: Vec<SettleReq>) {
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
    match shared
        .client
        .change_message_visibility_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => reply_results(
            &mut reqs,
            out.successful().iter().map(|s| s.id().to_owned()),
            out.failed().iter().map(|f| {
                (
                    f.id().to_owned(),
                    from_entry(f.code(), f.message(), f.sender_fault(), "nack"),
                )
            }),
        ),
        Err(e) => reply_all(&mut reqs, &from_sdk(e, "nack")),
    }
}

/// Extend the visibility of deliveries held longer than half the visibility timeout, so long
/// processing is not redelivered under the handler's feet. Stops when the consumer and all its
/// deliveries are gone.
async fn run_extender(control: Weak<Control>, visibility: Duration) {
    if visibility < Duration::from_secs(2) {
        // Too short to extend usefully; such a queue chose quick redelivery.
        return;
    }
    let period = visibility / 4;
    let secs = visibility.as_secs() as i32;
    loop {
        tokio::time::sleep(period).await;
        let Some(control) = control.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<String> = {
            let mut held = control.held();
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
            if control.settler.try_send(req).is_err() {
                break;
            }
        }
    }
}
