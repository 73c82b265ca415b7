//! Raw aws-sdk-sqs on an SQS-API server: what the SQS backend does, without mailroom. The SDK
//! client is the one the backend builds for the URL (same endpoint, region, credentials, HTTP
//! client). A producer packs what is waiting into `SendMessageBatch` calls (10 entries and the
//! configured size at most, after the backend's `linger`) with the backend's `send_concurrency`
//! calls in flight; a consumer long-polls `ReceiveMessage` for up to 10 messages and removes them
//! with one `DeleteMessageBatch` before handing them out, so every message returned is settled.
//! Payloads that are not text SQS can carry are sent base64-encoded, as a plain SDK user would.
//! The intended send time travels as a `Number` message attribute.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use base64::Engine as _;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, Semaphore};

use mailroom_core::{Destination, Error, ErrorKind, Result};
use mailroom_sqs::{SqsBackend, SqsConfig, MAX_BATCH_ENTRIES};

use super::driver::{
    Confirm, DriverConsumer, DriverProducer, Incoming, MailroomDriver, Outgoing, TopicPlan,
    SENT_AT_HEADER,
};
use super::raw::{RawClient, RawDriver};

fn failed(what: &str, e: impl std::error::Error) -> Error {
    Error::new(
        ErrorKind::Broker,
        format!("raw aws-sdk-sqs: {what} failed: {}", DisplayErrorContext(e)),
    )
}

/// Open the raw aws-sdk-sqs baseline for an `sqs://` URL.
pub async fn connect(url: &str) -> Result<RawDriver<RawSqs>> {
    let backend = SqsBackend::from_url(url).await?;
    let client = backend.client().clone();
    let config = backend.config().clone();
    Ok(RawDriver::new(
        MailroomDriver::new(Arc::new(backend)),
        RawSqs { client, config },
    ))
}

/// Raw SDK producers and consumers.
pub struct RawSqs {
    client: Client,
    config: SqsConfig,
}

impl RawSqs {
    async fn queue_url(&self, queue: &str) -> Result<String> {
        let out = self
            .client
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .map_err(|e| failed(&format!("GetQueueUrl '{queue}'"), e))?;
        out.queue_url()
            .map(str::to_owned)
            .ok_or_else(|| Error::not_found(format!("raw aws-sdk-sqs: no URL for '{queue}'")))
    }
}

#[async_trait]
impl RawClient for RawSqs {
    fn name(&self) -> String {
        "raw-sqs".to_owned()
    }

    fn library(&self) -> String {
        "aws-sdk-sqs 1".to_owned()
    }

    async fn producer(&self, destination: &Destination) -> Result<Box<dyn DriverProducer>> {
        let Destination::Queue(queue) = destination else {
            // Exchanges are SNS topics in the backend; this SQS-only baseline has no SNS client,
            // so a workload publishing to an exchange has no raw-client line on SQS.
            return Err(Error::unsupported("raw aws-sdk-sqs sends to queues only"));
        };
        let url = self.queue_url(queue).await?;
        let (tx, rx) = mpsc::channel(self.config.send_window.max(1));
        tokio::spawn(batcher(
            self.client.clone(),
            url,
            rx,
            Batching {
                concurrency: self.config.send_concurrency.max(1),
                linger: self.config.linger,
                max_bytes: self.config.max_message_size,
            },
        ));
        Ok(Box::new(SqsProducer { tx }))
    }

    async fn consumer(
        &self,
        _topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>> {
        Ok(Box::new(SqsConsumer {
            client: self.client.clone(),
            url: self.queue_url(subscription).await?,
            max_wait: self.config.wait_time,
            visibility: self.config.visibility_timeout,
            buffered: VecDeque::new(),
        }))
    }
}

/// A message waiting for its batch, and where its confirm goes.
struct Pending {
    body: String,
    intended_us: u64,
    reply: oneshot::Sender<Result<()>>,
}

impl Pending {
    /// Bytes as SQS counts them: body plus the attribute's name, type and value.
    fn size(&self) -> usize {
        self.body.len() + SENT_AT_HEADER.len() + "Number".len() + 20
    }
}

struct Batching {
    concurrency: usize,
    linger: Duration,
    max_bytes: usize,
}

struct SqsProducer {
    tx: mpsc::Sender<Pending>,
}

/// Whether SQS carries `s` as a body: not empty, only the XML characters it allows (and no
/// characters beyond the Basic Multilingual Plane, which some SQS-API servers refuse).
fn body_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(
            |c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}'),
        )
}

#[async_trait]
impl DriverProducer for SqsProducer {
    async fn send(&self, message: Outgoing) -> Result<Confirm> {
        let body = match std::str::from_utf8(&message.payload) {
            Ok(text) if body_safe(text) => text.to_owned(),
            _ => base64::engine::general_purpose::STANDARD.encode(&message.payload),
        };
        let (reply, confirm) = oneshot::channel();
        self.tx
            .send(Pending {
                body,
                intended_us: message.intended_us,
                reply,
            })
            .await
            .map_err(|_| Error::closed("raw aws-sdk-sqs: the batcher stopped"))?;
        Ok(async move {
            confirm.await.unwrap_or_else(|_| {
                Err(Error::closed(
                    "raw aws-sdk-sqs: the batcher stopped before the send was answered",
                ))
            })
        }
        .boxed())
    }

    async fn close(&self) -> Result<()> {
        // Every confirm has been awaited by now; dropping the producer stops the batcher.
        Ok(())
    }
}

/// Pack waiting messages into batch calls, `concurrency` calls in flight, until the producer
/// is dropped.
async fn batcher(client: Client, url: String, mut rx: mpsc::Receiver<Pending>, how: Batching) {
    let calls = Arc::new(Semaphore::new(how.concurrency));
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let mut bytes = first.size();
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + how.linger;
        while batch.len() < MAX_BATCH_ENTRIES {
            let next = match rx.try_recv() {
                Ok(p) => p,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(p)) => p,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if bytes + next.size() > how.max_bytes {
                carry = Some(next);
                break;
            }
            bytes += next.size();
            batch.push(next);
        }
        let Ok(permit) = calls.clone().acquire_owned().await else {
            break;
        };
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            send_batch(&client, &url, batch).await;
            drop(permit);
        });
    }
}

async fn send_batch(client: &Client, url: &str, batch: Vec<Pending>) {
    let mut entries = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        let entry = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(p.intended_us.to_string())
            .build()
            .and_then(|stamp| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&p.body)
                    .message_attributes(SENT_AT_HEADER, stamp)
                    .build()
            });
        match entry {
            Ok(e) => entries.push(e),
            Err(e) => {
                let e = failed("building a batch entry", e);
                for p in batch {
                    let _ = p.reply.send(Err(Error::new(e.kind(), e.message())));
                }
                return;
            }
        }
    }
    let result = client
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await;
    let mut replies: Vec<Option<oneshot::Sender<Result<()>>>> =
        batch.into_iter().map(|p| Some(p.reply)).collect();
    let mut answer = |id: &str, r: Result<()>| {
        if let Some(reply) = id
            .parse::<usize>()
            .ok()
            .and_then(|i| replies.get_mut(i))
            .and_then(Option::take)
        {
            let _ = reply.send(r);
        }
    };
    match result {
        Ok(out) => {
            for ok in out.successful() {
                answer(ok.id(), Ok(()));
            }
            for bad in out.failed() {
                answer(
                    bad.id(),
                    Err(Error::new(
                        ErrorKind::Rejected,
                        format!(
                            "raw aws-sdk-sqs: entry refused: {} {}",
                            bad.code(),
                            bad.message().unwrap_or("")
                        ),
                    )),
                );
            }
        }
        Err(e) => {
            let e = failed("SendMessageBatch", e);
            for reply in replies.iter_mut().filter_map(Option::take) {
                let _ = reply.send(Err(Error::new(e.kind(), e.message())));
            }
        }
    }
    for reply in replies.into_iter().flatten() {
        let _ = reply.send(Err(Error::new(
            ErrorKind::Broker,
            "raw aws-sdk-sqs: SendMessageBatch did not answer for an entry",
        )));
    }
}

struct SqsConsumer {
    client: Client,
    url: String,
    max_wait: Duration,
    visibility: Option<Duration>,
    buffered: VecDeque<Incoming>,
}

#[async_trait]
impl DriverConsumer for SqsConsumer {
    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        if let Some(next) = self.buffered.pop_front() {
            return Ok(Some(next));
        }
        // A receive call is never cut short (what it took would stay invisible until the
        // visibility timeout), so the wait is whole seconds: at least 1, at most the backend's.
        let wait = timeout
            .as_secs_f64()
            .ceil()
            .clamp(1.0, self.max_wait.as_secs_f64().clamp(1.0, 20.0));
        let mut request = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_BATCH_ENTRIES as i32)
            .wait_time_seconds(wait as i32)
            .message_attribute_names(SENT_AT_HEADER);
        if let Some(v) = self.visibility {
            request = request.visibility_timeout(v.as_secs() as i32);
        }
        let out = request
            .send()
            .await
            .map_err(|e| failed("ReceiveMessage", e))?;
        let mut deletes = Vec::new();
        for (i, m) in out.messages().iter().enumerate() {
            let Some(receipt) = m.receipt_handle() else {
                continue;
            };
            deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .map_err(|e| failed("building a delete entry", e))?,
            );
            self.buffered.push_back(Incoming {
                intended_us: m
                    .message_attributes()
                    .and_then(|a| a.get(SENT_AT_HEADER))
                    .and_then(|v| v.string_value())
                    .and_then(|v| v.parse().ok()),
                bytes: m.body().map_or(0, str::len),
            });
        }
        if !deletes.is_empty() {
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(deletes))
                .send()
                .await;
            // Nothing unsettled may be handed out.
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    self.buffered.clear();
                    return Err(failed("DeleteMessageBatch", e));
                }
            };
            if let Some(bad) = out.failed().first() {
                self.buffered.clear();
                return Err(Error::new(
                    ErrorKind::Broker,
                    format!(
                        "raw aws-sdk-sqs: {} deletes failed, first: {} {}",
                        out.failed().len(),
                        bad.code(),
                        bad.message().unwrap_or("")
                    ),
                ));
            }
        }
        Ok(self.buffered.pop_front())
    }

    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
