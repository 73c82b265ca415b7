//! Consuming with manual acks and a prefetch window, across reconnects (settling is in
//! `settle.rs`).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use mailroom_core::consumer::closed_consumer;
use mailroom_core::operation::{CONSUME, RECEIVE};
use mailroom_core::topology::validate_name;
use mailroom_core::{
    Capability, Consumer, ConsumerOptions, Delivery, DeliveryInfo, Error, ErrorKind, Producer,
    Replay, Result,
};
use tokio::task::JoinHandle;

use crate::codec;
use crate::connection::{close_within, Connection, Failure, Link, QueueSettings};
use crate::error::{is_connection_loss, map};
use crate::producer::RabbitProducer;
use crate::settle::RabbitSettle;
use crate::stream::{Cursor, StreamAck};
use crate::BACKEND;

/// A consumer on one RabbitMQ queue (its own channel, `basic.qos` prefetch, manual acks).
///
/// On a stream queue it starts where its replay says, else after its group's stored position
/// (`stream.rs`), and its acks move that position.
///
/// After a lost connection the next `receive` reconnects and consumes again; deliveries that
/// were unacked on the old channel come back from the broker marked redelivered. Consuming
/// again runs in a task of its own, so a `receive` that is cancelled (`receive_timeout`) does
/// not cancel it: the next `receive` picks it up where it was, and it ends, consuming or with
/// an error, within the reconnect timeout.
pub struct RabbitConsumer {
    connection: Arc<Connection>,
    queue: String,
    prefetch: u16,
    settings: QueueSettings,
    state: Option<Subscription>,
    /// Consuming again after a lost connection, while it is under way.
    restart: Option<JoinHandle<Result<Subscription>>>,
    closed: bool,
    /// Publishes client-side requeues and dead letters; opened on first use.
    side: Arc<OnceLock<RabbitProducer>>,
    /// On a stream queue: where to start, what was delivered and acked, the stored position.
    cursor: Option<Arc<Cursor>>,
}

struct Subscription {
    conn: Arc<Link>,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl RabbitConsumer {
    pub(crate) async fn open(
        connection: Arc<Connection>,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<Self> {
        let context = |e: Error| e.with_backend(BACKEND).with_operation(CONSUME);
        connection.check_open(CONSUME)?;
        // Kept under the capability layer's check: a bare backend would otherwise ignore the
        // replay and deliver the queue's next message instead.
        if options.replay.is_some() {
            connection
                .capabilities
                .require(Capability::Replay, BACKEND, CONSUME)?;
        }
        validate_name("queue", queue).map_err(context)?;
        if let Some(Replay::Offset(o)) = options.replay {
            if o < 0 {
                return Err(context(Error::invalid_input(format!(
                    "replay offset {o} is negative; use Replay::Earliest or Replay::Latest"
                ))));
            }
        }
        let prefetch = match options.prefetch {
            None => connection.config.prefetch,
            Some(0) => {
                return Err(context(Error::invalid_input(
                    "prefetch must be at least 1 (0 would mean unbounded)",
                )))
            }
            Some(n) => u16::try_from(n).map_err(|_| {
                context(Error::invalid_input(format!(
                    "prefetch {n} exceeds AMQP's maximum of {}",
                    u16::MAX
                )))
            })?,
        };
        let settings = connection.queue_settings(queue);
        if options.replay.is_some() && !settings.stream {
            return Err(context(Error::unsupported(format!(
                "queue '{queue}' is not a stream: replay needs a stream queue (declared with \
                 x-queue-type=stream, or by a backend opened with ?queue_type=stream)"
            ))));
        }
        let cursor = match settings.stream {
            true => Some(Arc::new(
                Cursor::open(connection.clone(), queue, options.replay)
                    .await
                    .map_err(|e| e.with_operation(CONSUME))?,
            )),
            false => None,
        };
        let mut consumer = RabbitConsumer {
            connection,
            queue: queue.to_owned(),
            prefetch,
            settings,
            state: None,
            restart: None,
            closed: false,
            side: Arc::new(OnceLock::new()),
            cursor,
        };
        // Start at once so a missing queue is reported here, not on the first receive.
        let live = match start(
            consumer.connection.clone(),
            consumer.queue.clone(),
            prefetch,
            consumer.start_arguments(),
        )
        .await
        {
            Ok(live) => live,
            Err(e) => {
                if consumer.cursor.is_some() && e.kind() == ErrorKind::NotFound {
                    // No such stream: the position queue the cursor declared would outlive it.
                    crate::stream::forget_position(&consumer.connection, &consumer.queue).await;
                }
                return Err(e);
            }
        };
        consumer.state = Some(live);
        Ok(consumer)
    }

    /// The `basic.consume` arguments: on a stream, where to read from (after a lost channel,
    /// the first delivery not acked yet), and the deliveries of the old channel stop counting.
    fn start_arguments(&self) -> FieldTable {
        match &self.cursor {
            Some(cursor) => {
                let args = cursor.start_at().arguments();
                cursor.restarted();
                args
            }
            None => FieldTable::default(),
        }
    }

    /// The delivery handed out, or `None` for a stream message a replay by time skips (acked
    /// in the background, so that `receive` stays cancel-safe).
    fn delivery(&self, d: lapin::message::Delivery, conn: Arc<Link>) -> Option<Delivery> {
        let lapin::message::Delivery {
            redelivered,
            properties,
            data,
            acker,
            routing_key,
            ..
        } = d;
        let (message, received) = codec::decode(&properties, data);
        let stream = match (&self.cursor, received.stream_offset) {
            (Some(cursor), Some(offset)) => Some(StreamAck {
                cursor: cursor.clone(),
                epoch: cursor.delivered(offset),
                offset,
            }),
            _ => None,
        };
        if let Some(ack) = stream.as_ref().filter(|s| s.cursor.skips(&message)) {
            let ack = StreamAck {
                cursor: ack.cursor.clone(),
                ..*ack
            };
            let wait = self.connection.config.connect_timeout();
            tokio::spawn(async move {
                let acked = tokio::time::timeout(wait, acker.ack(BasicAckOptions::default()));
                if let Ok(Ok(true)) = acked.await {
                    ack.acked().await;
                }
            });
            return None;
        }
        let base = received.attempt.unwrap_or(1).max(1);
        let attempt = match received.delivery_count {
            Some(count) => base.saturating_add(count),
            None => base.saturating_add(u32::from(redelivered)),
        };
        let info = DeliveryInfo {
            attempt,
            redelivered: redelivered || attempt > 1,
            routing_key: Some(Arc::from(routing_key.as_str())),
            offset: stream.as_ref().map(|s| s.offset),
            consumer_group: stream.as_ref().map(|_| Arc::from(self.queue.as_str())),
            ..DeliveryInfo::new(self.queue.as_str())
        };
        let settle = RabbitSettle {
            acker: Some(acker),
            conn,
            connection: self.connection.clone(),
            side: self.side.clone(),
            queue: self.queue.clone(),
            settings: self.settings.clone(),
            message: message.clone(),
            attempt,
            stream,
        };
        Some(Delivery::new(message, info, Box::new(settle)))
    }
}

/// Open a channel, set the prefetch and start consuming, across reconnects, each step bounded
/// (see `Connection::answer`), the whole within the reconnect timeout.
async fn start(
    connection: Arc<Connection>,
    queue: String,
    prefetch: u16,
    arguments: FieldTable,
) -> Result<Subscription> {
    let what = format!("queue '{queue}'");
    let deadline = connection.deadline();
    loop {
        let (conn, channel) = connection
            .channel(deadline)
            .await
            .map_err(|e| e.with_operation(CONSUME))?;
        let qos = channel.basic_qos(prefetch, BasicQosOptions::default());
        let consumed = match connection.answer(&conn, deadline, "basic.qos", qos).await {
            Ok(()) => {
                let consume = channel.basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    arguments.clone(),
                );
                connection
                    .answer(&conn, deadline, "basic.consume", consume)
                    .await
            }
            Err(failure) => Err(failure),
        };
        match consumed {
            Ok(consumer) => {
                return Ok(Subscription {
                    conn,
                    channel,
                    consumer,
                })
            }
            Err(Failure::Refused(e)) => return Err(map(e, CONSUME, &what)),
            Err(Failure::Lost(lost)) if deadline.passed() => {
                return Err(connection.gave_up(CONSUME, &lost))
            }
            Err(Failure::Lost(lost)) => {
                tracing::debug!(%lost, queue = %queue, "could not consume; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            if self.closed || self.connection.is_closed() {
                return Err(closed_consumer(BACKEND));
            }
            if self.state.is_none() {
                if self.restart.is_none() {
                    let (connection, queue) = (self.connection.clone(), self.queue.clone());
                    let arguments = self.start_arguments();
                    self.restart = Some(tokio::spawn(start(
                        connection,
                        queue,
                        self.prefetch,
                        arguments,
                    )));
                }
                let Some(restart) = self.restart.as_mut() else {
                    continue;
                };
                // Awaiting the handle, not the task: a cancelled receive leaves it running.
                let started = restart.await;
                self.restart = None;
                match started {
                    Ok(Ok(live)) => self.state = Some(live),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => {
                        return Err(Error::new(
                            ErrorKind::Broker,
                            format!("consuming again after a lost connection failed: {e}"),
                        )
                        .with_backend(BACKEND)
                        .with_operation(RECEIVE))
                    }
                }
            }
            let Some(live) = self.state.as_mut() else {
                continue;
            };
            // `next` takes a delivery only when it is ready, so dropping this future loses
            // nothing: receive is cancel-safe. A connection the backend gave up (it went
            // silent) ends the wait too: lapin reports broken connections, not silent ones.
            let conn = live.conn.clone();
            let next = tokio::select! {
                biased;
                next = live.consumer.next() => next,
                () = live.conn.retired() => {
                    tracing::debug!(queue = %self.queue, "the consumer's connection was given up; resuming");
                    self.state = None;
                    continue;
                }
            };
            match next {
                Some(Ok(d)) => {
                    if let Some(delivery) = self.delivery(d, conn) {
                        return Ok(delivery);
                    }
                }
                Some(Err(e)) if is_connection_loss(&e) => {
                    tracing::debug!(error = %e, queue = %self.queue, "consumer lost its connection; resuming");
                    if let Some(live) = self.state.take() {
                        self.connection.forget(&live.conn);
                    }
                }
                Some(Err(e)) => {
                    self.state = None;
                    return Err(map(e, "receive", &format!("queue '{}'", self.queue)));
                }
                None => {
                    // Cancelled by the broker (queue deleted) or the channel closed: consuming
                    // again either resumes or reports why not (e.g. NotFound).
                    if let Some(live) = self.state.take() {
                        self.connection.forget(&live.conn);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        if let Some(restart) = self.restart.take() {
            restart.abort();
        }
        if let Some(live) = self.state.take() {
            drop(live.consumer);
            if live.channel.status().connected() {
                // Closing the channel hands every unacked delivery back to the queue.
                let wait = self.connection.config.connect_timeout();
                close_within(wait, "channel", live.channel.close(200, "OK".into())).await;
            }
        }
        if let Some(side) = self.side.get() {
            side.close().await?;
        }
        if let Some(cursor) = &self.cursor {
            cursor.flush().await;
        }
        Ok(())
    }
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        // Dropping the lapin channel and consumer closes the channel in the background, and the
        // broker requeues what was unacked.
        self.state.take();
        if let Some(restart) = self.restart.take() {
            restart.abort();
        }
    }
}
