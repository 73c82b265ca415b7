//! The producer: a bounded window, and one batcher task per queue packing `SendMessageBatch`
//! calls, or per exchange packing SNS `PublishBatch` calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue as SnsAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use mailroom_core::operation::SEND;
use mailroom_core::{
    Destination, Error, ErrorKind, Message, PendingConfirm, Producer, Receipt, Result,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::codec::{self, Encoded};
use crate::connection::Connection;
use crate::error::{context, from_entry, from_sdk};
use crate::exchange;
use crate::MAX_BATCH_ENTRIES;

/// Times an entry the service failed on its own side is sent again before its error is returned.
const ENTRY_RETRIES: u32 = 4;

/// One accepted message on its way to a batch call.
struct Entry {
    message: Message,
    encoded: Encoded,
    reply: oneshot::Sender<Result<Receipt>>,
    _slot: OwnedSemaphorePermit,
}

/// Where a batch goes: a queue (by URL) or an exchange's SNS topic (by ARN).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Queue(Arc<str>),
    Topic(Arc<str>),
}

/// Sends to SQS queues, and to exchanges through SNS, batching concurrent and pipelined sends.
pub struct SqsProducer {
    connection: Arc<Connection>,
    window: Arc<Semaphore>,
    window_size: u32,
    batchers: Mutex<HashMap<Target, mpsc::Sender<Entry>>>,
    closed: AtomicBool,
}

impl SqsProducer {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        let window_size = u32::try_from(connection.config.send_window).unwrap_or(u32::MAX);
        SqsProducer {
            window: Arc::new(Semaphore::new(window_size as usize)),
            window_size,
            batchers: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            connection,
        }
    }

    fn batcher(&self, target: &Target) -> mpsc::Sender<Entry> {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = batchers.get(target).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        // The window bounds what is in flight, so this channel never holds more than it.
        let (tx, rx) = mpsc::channel(self.connection.config.send_window.max(1));
        tokio::spawn(run_batcher(self.connection.clone(), target.clone(), rx));
        batchers.insert(target.clone(), tx.clone());
        tx
    }

    async fn accept(
        &self,
        destination: &Destination,
        message: &Message,
    ) -> Result<(Target, Encoded)> {
        let op = "send";
        if self.closed.load(Ordering::Acquire) {
            return Err(context(Error::closed("producer is closed"), op));
        }
        self.connection.check_open(op)?;
        let max = self.connection.config.max_message_size;
        // Size and delay limits are the capability layer's; the codec enforces SQS's own too.
        match destination {
            Destination::Queue(queue) => {
                let encoded = codec::encode(message, queue.ends_with(".fifo"), max)
                    .map_err(|e| context(e, op))?;
                let url = self.connection.queue_url(queue, op).await?;
                Ok((Target::Queue(Arc::from(url)), encoded))
            }
            Destination::Exchange { name, routing_key } => {
                let encoded =
                    codec::encode_for_exchange(message, routing_key, name.ends_with(".fifo"), max)
                        .map_err(|e| context(e, op))?;
                let arn = exchange::topic_arn(&self.connection, name, op).await?;
                Ok((Target::Topic(Arc::from(arn)), encoded))
            }
        }
    }
}

#[async_trait]
impl Producer for SqsProducer {
    async fn enqueue(&self, destination: &Destination, message: Message) -> Result<PendingConfirm> {
        let (target, encoded) = match self.accept(destination, &message).await {
            Ok(v) => v,
            Err(e) => return Err(e.with_undelivered(message)),
        };
        let slot = match self.window.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => {
                return Err(
                    context(Error::closed("producer is closed"), SEND).with_undelivered(message)
                )
            }
        };
        let (reply, confirm) = oneshot::channel();
        let entry = Entry {
            message,
            encoded,
            reply,
            _slot: slot,
        };
        if let Err(mpsc::error::SendError(entry)) = self.batcher(&target).send(entry).await {
            return Err(context(
                Error::new(ErrorKind::Broker, "the destination's batcher task stopped"),
                SEND,
            )
            .with_undelivered(entry.message));
        }
        Ok(PendingConfirm::waiting(async move {
            confirm.await.unwrap_or_else(|_| {
                Err(context(
                    Error::new(
                        ErrorKind::Broker,
                        "the batcher dropped a send without an answer",
                    ),
                    SEND,
                ))
            })
        }))
    }

    async fn flush(&self) -> Result<()> {
        // Every slot free means every accepted message has its answer.
        match self.window.acquire_many(self.window_size).await {
            Ok(all) => {
                drop(all);
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.flush().await?;
        self.window.close();
        Ok(())
    }
}

impl std::fmt::Debug for SqsProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsProducer")
            .field("window", &self.window_size)
            .field("free", &self.window.available_permits())
            .finish()
    }
}

/// Gather what waits for one queue or topic into batches of at most 10 entries and `max_message_size`
/// bytes, keeping up to `send_concurrency` calls in flight. While every call slot is taken, new
/// entries pile up in the channel, so batches grow exactly when throughput needs them to.
async fn run_batcher(connection: Arc<Connection>, target: Target, mut rx: mpsc::Receiver<Entry>) {
    let calls = Arc::new(Semaphore::new(connection.config.send_concurrency));
    let max_bytes = connection.config.max_message_size;
    let linger = connection.config.linger;
    let mut carry: Option<Entry> = None;
    loop {
        let Ok(call) = calls.clone().acquire_owned().await else {
            break;
        };
        let first = match carry.take() {
            Some(e) => e,
            None => match rx.recv().await {
                Some(e) => e,
                None => break,
            },
        };
        let mut bytes = first.encoded.size;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < MAX_BATCH_ENTRIES {
            let next = match rx.try_recv() {
                Ok(e) => e,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if linger.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(e)) => e,
                        _ => break,
                    }
                }
            };
            if bytes + next.encoded.size > max_bytes {
                carry = Some(next);
                break;
            }
            bytes += next.encoded.size;
            batch.push(next);
        }
        tokio::spawn(send_batch(connection.clone(), target.clone(), batch, call));
    }
}

fn request_entry(index: usize, e: &Encoded) -> Result<SendMessageBatchRequestEntry> {
    SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(e.body.clone())
        .set_message_attributes(Some(e.attributes.clone()))
        .set_delay_seconds(e.delay_seconds)
        .set_message_group_id(e.group_id.clone())
        .set_message_deduplication_id(e.dedup_id.clone())
        .build()
        .map_err(|err| {
            Error::new(ErrorKind::Encode, "batch entry could not be built").with_source(err)
        })
}

/// The same entry as an SNS `PublishBatch` entry: the attributes are carried over as they are,
/// and raw delivery hands them to the queue unchanged.
fn publish_entry(index: usize, e: &Encoded) -> Result<PublishBatchRequestEntry> {
    let build_failed =
        |err| Error::new(ErrorKind::Encode, "publish entry could not be built").with_source(err);
    let mut attributes = HashMap::with_capacity(e.attributes.len());
    for (name, value) in &e.attributes {
        let v = SnsAttributeValue::builder()
            .data_type(value.data_type())
            .set_string_value(value.string_value().map(str::to_owned))
            .set_binary_value(value.binary_value().cloned())
            .build()
            .map_err(build_failed)?;
        attributes.insert(name.clone(), v);
    }
    PublishBatchRequestEntry::builder()
        .id(index.to_string())
        .message(e.body.clone())
        .set_message_attributes(Some(attributes))
        .set_message_group_id(e.group_id.clone())
        .set_message_deduplication_id(e.dedup_id.clone())
        .build()
        .map_err(build_failed)
}

/// What one batch call answered: the ids that were accepted, and the failed ones with their
/// error.
struct Outcome {
    accepted: Vec<String>,
    failed: Vec<(String, Error)>,
}

/// The request entries of the pending messages; a message whose entry cannot be built is
/// answered with that error here and left out.
fn build_entries<R>(
    pending: &mut [Option<Entry>],
    op: &'static str,
    build: impl Fn(usize, &Encoded) -> Result<R>,
) -> Vec<R> {
    let mut entries = Vec::with_capacity(pending.len());
    for (i, slot) in pending.iter_mut().enumerate() {
        let Some(entry) = slot else { continue };
        match build(i, &entry.encoded) {
            Ok(r) => entries.push(r),
            Err(err) => answer(slot, Err(context(err, op))),
        }
    }
    entries
}

/// One `SendMessageBatch` or `PublishBatch` call with the entries still pending; entries that
/// cannot be built are answered here.
async fn call_batch(
    connection: &Connection,
    target: &Target,
    pending: &mut [Option<Entry>],
    op: &'static str,
) -> Option<Result<Outcome>> {
    match target {
        Target::Queue(url) => {
            let entries = build_entries(pending, op, request_entry);
            if entries.is_empty() {
                return None;
            }
            let result = connection
                .client
                .send_message_batch()
                .queue_url(url.as_ref())
                .set_entries(Some(entries))
                .send()
                .await;
            Some(result.map_err(|e| from_sdk(e, op)).map(|out| {
                Outcome {
                    accepted: out
                        .successful()
                        .iter()
                        .map(|ok| ok.id().to_owned())
                        .collect(),
                    failed: out
                        .failed()
                        .iter()
                        .map(|f| {
                            let err = from_entry(f.code(), f.message(), f.sender_fault(), op);
                            (f.id().to_owned(), err)
                        })
                        .collect(),
                }
            }))
        }
        Target::Topic(arn) => {
            let entries = build_entries(pending, op, publish_entry);
            if entries.is_empty() {
                return None;
            }
            let result = connection
                .sns
                .publish_batch()
                .topic_arn(arn.as_ref())
                .set_publish_batch_request_entries(Some(entries))
                .send()
                .await;
            Some(result.map_err(|e| from_sdk(e, op)).map(|out| {
                Outcome {
                    accepted: out
                        .successful()
                        .iter()
                        .filter_map(|ok| ok.id().map(str::to_owned))
                        .collect(),
                    failed: out
                        .failed()
                        .iter()
                        .map(|f| {
                            let err = from_entry(f.code(), f.message(), f.sender_fault(), op);
                            (f.id().to_owned(), err)
                        })
                        .collect(),
                }
            }))
        }
    }
}

/// Send one batch; retry only the entries the service failed on its side; answer every entry.
async fn send_batch(
    connection: Arc<Connection>,
    target: Target,
    batch: Vec<Entry>,
    _call: OwnedSemaphorePermit,
) {
    let op = "send";
    let mut pending: Vec<Option<Entry>> = batch.into_iter().map(Some).collect();
    for attempt in 0..=ENTRY_RETRIES {
        let out = match call_batch(&connection, &target, &mut pending, op).await {
            None => return,
            Some(Ok(out)) => out,
            Some(Err(err)) => {
                // The SDK has already retried what its retry policy deems transient.
                for e in pending.iter_mut() {
                    answer(e, Err(copy_error(&err)));
                }
                return;
            }
        };
        for id in &out.accepted {
            if let Some(slot) = id.parse::<usize>().ok().and_then(|i| pending.get_mut(i)) {
                let receipt = slot.as_ref().map(|e| Receipt::new(e.message.id().clone()));
                if let Some(receipt) = receipt {
                    answer(slot, Ok(receipt));
                }
            }
        }
        let mut retry = false;
        for (id, err) in out.failed {
            let Some(slot) = id.parse::<usize>().ok().and_then(|i| pending.get_mut(i)) else {
                continue;
            };
            if err.is_temporary() && attempt < ENTRY_RETRIES {
                retry = true;
            } else {
                answer(slot, Err(err));
            }
        }
        if !retry {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
    for e in pending.iter_mut() {
        answer(
            e,
            Err(context(
                Error::new(
                    ErrorKind::Broker,
                    "the batch call reported neither success nor failure for this entry",
                ),
                op,
            )),
        );
    }
}

/// Answer a pending entry (returning its message inside an error) and free its slot.
fn answer(slot: &mut Option<Entry>, result: Result<Receipt>) {
    if let Some(entry) = slot.take() {
        let result = result.map_err(|e| e.with_undelivered(entry.message));
        // The caller may have dropped its confirm; the message is answered for either way.
        let _ = entry.reply.send(result);
    }
}

/// The same failure for another message of a failed call.
fn copy_error(err: &Error) -> Error {
    let mut e = Error::new(err.kind(), err.message()).set_temporary(err.is_temporary());
    if let Some(b) = err.backend() {
        e = e.with_backend(b);
    }
    if let Some(o) = err.operation() {
        e = e.with_operation(o);
    }
    e
}

/// Send one encoded message alone (dead-lettering), returning the service's error if any.
pub(crate) async fn send_one(
    connection: &Connection,
    url: &str,
    e: Encoded,
    op: &'static str,
) -> Result<()> {
    connection
        .client
        .send_message()
        .queue_url(url)
        .message_body(e.body)
        .set_message_attributes(Some(e.attributes))
        .set_delay_seconds(e.delay_seconds)
        .set_message_group_id(e.group_id)
        .set_message_deduplication_id(e.dedup_id)
        .send()
        .await
        .map_err(|err| from_sdk(err, op))?;
    Ok(())
}
