//! Receiving: a long-polling task filling a prefetch buffer (settling is in `settle.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use mailroom_core::operation::{CONSUME, RECEIVE};
use mailroom_core::{Consumer, ConsumerOptions, Delivery, DeliveryInfo, ErrorKind, Result};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::codec;
use crate::connection::Connection;
use crate::error::from_sdk;
use crate::settle::SettleScope;
use crate::{BACKEND, MAX_BATCH_ENTRIES};

/// Deliveries buffered ahead of `receive` when the options name no prefetch.
const DEFAULT_PREFETCH: u32 = 10;
/// One received message on its way to `receive`, with its prefetch credit.
struct Received {
    delivery: Result<Delivery>,
    _credit: OwnedSemaphorePermit,
}

/// Receives from one SQS queue.
pub struct SqsConsumer {
    queue: String,
    /// Kept so that `close` can wait for the settles queued so far.
    scope: Arc<SettleScope>,
    rx: mpsc::Receiver<Received>,
    stop: Arc<AtomicBool>,
    closed: bool,
}

impl SqsConsumer {
    pub(crate) async fn open(
        connection: Arc<Connection>,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<Self> {
        let op = CONSUME;
        let url = connection.queue_url(queue, op).await?;
        let attrs = connection
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
        let visibility = connection.config.visibility_timeout.unwrap_or_else(|| {
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
                match connection.queue_url(name, op).await {
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
        let url: Arc<str> = Arc::from(url.as_str());
        let scope = SettleScope::open(connection.clone(), queue, url, dlq_url, visibility);
        let (tx, rx) = mpsc::channel(prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        tokio::spawn(run_poller(scope.clone(), tx, prefetch, stop.clone()));
        Ok(SqsConsumer {
            queue: queue.to_owned(),
            scope,
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
        self.scope.consumer_gone.store(true, Ordering::SeqCst);
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
        self.scope.flush().await;
        Ok(())
    }
}

/// Long-poll for as many messages as there is prefetch room for, until the consumer goes away.
async fn run_poller(
    scope: Arc<SettleScope>,
    tx: mpsc::Sender<Received>,
    prefetch: usize,
    stop: Arc<AtomicBool>,
) {
    let connection = scope.connection.clone();
    let credits = Arc::new(Semaphore::new(prefetch));
    let wait = connection.config.wait_time.as_secs().min(20) as i32;
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
        if stop.load(Ordering::Acquire) || connection.is_closed() {
            return;
        }
        let mut request = connection
            .client
            .receive_message()
            .queue_url(scope.url.as_ref())
            .max_number_of_messages(batch.len() as i32)
            .wait_time_seconds(wait)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId);
        if let Some(v) = connection.config.visibility_timeout {
            request = request.visibility_timeout(v.as_secs() as i32);
        }
        let timeouts = connection.receive_timeouts();
        match request
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::default().timeout_config(timeouts))
            .send()
            .await
        {
            Ok(out) => {
                failures = 0;
                for msg in out.messages() {
                    let Some(receipt) = msg.receipt_handle().map(str::to_owned) else {
                        continue;
                    };
                    let Some(credit) = batch.pop() else {
                        // More than asked for: give it back rather than overfill the buffer.
                        scope.release(receipt);
                        continue;
                    };
                    let message = codec::decode(msg);
                    let attempt = codec::receive_count(msg);
                    let mut info = DeliveryInfo::new(scope.queue.clone());
                    info.attempt = attempt;
                    info.redelivered = attempt > 1;
                    let settle = scope.track(receipt, message.clone(), attempt);
                    let delivery = Delivery::new(message, info, Box::new(settle));
                    // If the consumer is gone, the delivery drops here and is released.
                    let _ = tx.try_send(Received {
                        delivery: Ok(delivery),
                        _credit: credit,
                    });
                }
            }
            Err(e) => {
                let err = from_sdk(e, RECEIVE);
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
