//! Counters and durations of sending, receiving and settling, under OpenTelemetry's messaging
//! metric names, through the `metrics` facade (the application installs the recorder).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use metrics::{Counter, Histogram, Unit};

use super::{wrap_settle, Layer};
use crate::backend::Backend;
use crate::consumer::Consumer;
use crate::delivery::{Delivery, Nack, Settle, Settlement};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::{Destination, PendingConfirm, Producer, Receipt};

/// Messages a producer sent, or tried to (counter; OpenTelemetry
/// `messaging.client.sent.messages`).
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// Messages handed to the application by a consumer (counter; OpenTelemetry
/// `messaging.client.consumed.messages`).
pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
/// How long a send (to its confirm), a receive or a settle took, in seconds (histogram;
/// OpenTelemetry `messaging.client.operation.duration`).
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";

/// Counts sent and consumed messages and times every send (from hand-off to confirm), receive
/// and settle, with the attributes OpenTelemetry names: `messaging.system`,
/// `messaging.destination.name`, `messaging.operation.type` (`send`, `receive`, `settle`),
/// `messaging.operation.name`, and `error.type` (the error kind) on failures.
///
/// It records through the [`metrics`] facade and installs no recorder: an application that
/// wants the numbers installs one (Prometheus, OpenTelemetry, statsd exporters exist), and one
/// that does not pays a check per operation: the backend's own future is handed back unwrapped,
/// with no clock read. Handles are resolved once per destination, so a
/// message costs no label building or lookup allocation; only a confirm still to come is
/// wrapped (to time it).
///
/// Settles are timed only when asked for ([`MetricsLayer::settle_durations`]): that wraps
/// every delivery's settle handle, an allocation and two clock reads per message, which is
/// worth it where a settle is a network call and not where it is a memory write.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer {
    settle_durations: bool,
}

impl MetricsLayer {
    /// The layer; it describes its metrics (unit and help text) to the recorder installed now.
    pub fn new() -> Self {
        metrics::describe_counter!(
            SENT_MESSAGES,
            Unit::Count,
            "Messages a producer sent or tried to send"
        );
        metrics::describe_counter!(
            CONSUMED_MESSAGES,
            Unit::Count,
            "Messages a consumer handed to the application"
        );
        metrics::describe_histogram!(
            OPERATION_DURATION,
            Unit::Seconds,
            "Duration of a send (to its confirm), receive or settle"
        );
        MetricsLayer::default()
    }

    /// Time every ack and nack too (off by default; see the type's docs for the cost).
    pub fn settle_durations(mut self, on: bool) -> Self {
        self.settle_durations = on;
        self
    }
}

impl Layer for MetricsLayer {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn producer(&self, backend: &dyn Backend, producer: Box<dyn Producer>) -> Box<dyn Producer> {
        Box::new(MeteredProducer {
            inner: producer,
            system: backend.name(),
            destinations: RwLock::default(),
        })
    }

    fn consumer(
        &self,
        backend: &dyn Backend,
        queue: &str,
        consumer: Box<dyn Consumer>,
    ) -> Box<dyn Consumer> {
        Box::new(MeteredConsumer {
            inner: consumer,
            meters: Arc::new(ConsumerMeters::new(backend.name(), queue)),
            settle_durations: self.settle_durations,
        })
    }
}

/// Whether a recorder is installed (globally, or locally around this call). The facade's
/// stand-in when none is, `NoopRecorder`, is the only recorder without a field; a real one
/// keeps its storage. Two thread-local and atomic loads: checked per operation, so a recorder
/// installed after a producer opened is still fed.
fn recording() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// The handles of one operation on one destination, with the labels to name its failures.
struct Meters {
    system: &'static str,
    destination: String,
    operation_type: &'static str,
    operation: &'static str,
    duration: Histogram,
}

impl Meters {
    fn new(
        system: &'static str,
        destination: &str,
        operation_type: &'static str,
        operation: &'static str,
    ) -> Self {
        let duration = metrics::histogram!(
            OPERATION_DURATION,
            "messaging.system" => system,
            "messaging.destination.name" => destination.to_owned(),
            "messaging.operation.type" => operation_type,
            "messaging.operation.name" => operation,
        );
        Meters {
            system,
            destination: destination.to_owned(),
            operation_type,
            operation,
            duration,
        }
    }

    fn counter(&self, name: &'static str) -> Counter {
        metrics::counter!(
            name,
            "messaging.system" => self.system,
            "messaging.destination.name" => self.destination.clone(),
            "messaging.operation.type" => self.operation_type,
            "messaging.operation.name" => self.operation,
        )
    }

    /// Record a failed operation under its error kind (the rare path: handles are made here).
    fn failed(&self, counter: Option<&'static str>, error: &Error, took: Duration) {
        let kind = error.kind().as_str();
        metrics::histogram!(
            OPERATION_DURATION,
            "messaging.system" => self.system,
            "messaging.destination.name" => self.destination.clone(),
            "messaging.operation.type" => self.operation_type,
            "messaging.operation.name" => self.operation,
            "error.type" => kind,
        )
        .record(took.as_secs_f64());
        if let Some(name) = counter {
            metrics::counter!(
                name,
                "messaging.system" => self.system,
                "messaging.destination.name" => self.destination.clone(),
                "messaging.operation.type" => self.operation_type,
                "messaging.operation.name" => self.operation,
                "error.type" => kind,
            )
            .increment(1);
        }
    }
}

/// The send handles of one destination.
struct SendMeters {
    meters: Meters,
    sent: Counter,
}

impl SendMeters {
    fn new(system: &'static str, destination: &str) -> Self {
        let meters = Meters::new(system, destination, "send", "send");
        let sent = meters.counter(SENT_MESSAGES);
        SendMeters { meters, sent }
    }

    fn observe(&self, started: Instant, result: &Result<Receipt>) {
        match result {
            Ok(_) => {
                self.sent.increment(1);
                self.meters.duration.record(started.elapsed().as_secs_f64());
            }
            Err(e) => self
                .meters
                .failed(Some(SENT_MESSAGES), e, started.elapsed()),
        }
    }
}

struct MeteredProducer {
    inner: Box<dyn Producer>,
    system: &'static str,
    /// By destination name; a producer sends to few, so a scan beats hashing.
    destinations: RwLock<Vec<(Box<str>, Arc<SendMeters>)>>,
}

impl MeteredProducer {
    /// Run `f` on the handles of `destination`, made the first time it is seen. The known
    /// ones are read under the lock, without cloning their `Arc`.
    fn with_meters<T>(
        &self,
        destination: &Destination,
        f: impl FnOnce(&Arc<SendMeters>) -> T,
    ) -> T {
        let name = destination.name();
        if let Ok(list) = self.destinations.read() {
            if let Some((_, meters)) = list.iter().find(|(n, _)| &**n == name) {
                return f(meters);
            }
        }
        let mut list = match self.destinations.write() {
            Ok(list) => list,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, meters)) = list.iter().find(|(n, _)| &**n == name) {
            return f(meters);
        }
        let meters = Arc::new(SendMeters::new(self.system, name));
        list.push((name.into(), meters.clone()));
        f(&meters)
    }

    /// Record the outcome of one hand-off: now if known, else when its confirm comes.
    fn observe(
        meters: &Arc<SendMeters>,
        started: Instant,
        result: Result<PendingConfirm>,
    ) -> Result<PendingConfirm> {
        let mut confirm = match result {
            Ok(confirm) => confirm,
            Err(e) => {
                meters
                    .meters
                    .failed(Some(SENT_MESSAGES), &e, started.elapsed());
                return Err(e);
            }
        };
        match confirm.take_if_ready() {
            Some(known) => {
                meters.observe(started, &known);
                Ok(PendingConfirm::ready(known))
            }
            None => {
                let meters = meters.clone();
                Ok(PendingConfirm::waiting(async move {
                    let result = confirm.await;
                    meters.observe(started, &result);
                    result
                }))
            }
        }
    }
}

#[async_trait]
impl Producer for MeteredProducer {
    // The per-message paths hand the backend's own future back while no recorder is
    // installed (no wrapping future, no clock reads); the signatures are those `async_trait`
    // gives the trait.
    fn enqueue<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        message: Message,
    ) -> BoxFuture<'f, Result<PendingConfirm>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        if !recording() {
            return self.inner.enqueue(destination, message);
        }
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.enqueue(destination, message).await;
            self.with_meters(destination, |meters| Self::observe(meters, started, result))
        })
    }

    async fn enqueue_batch(
        &self,
        destination: &Destination,
        messages: &mut Vec<Message>,
        pending: &mut Vec<Result<PendingConfirm>>,
    ) {
        if !recording() {
            return self
                .inner
                .enqueue_batch(destination, messages, pending)
                .await;
        }
        let started = Instant::now();
        let start = pending.len();
        self.inner
            .enqueue_batch(destination, messages, pending)
            .await;
        // Confirms already in count together, with one reading of the clock.
        let took = started.elapsed();
        self.with_meters(destination, |meters| {
            let mut confirmed = 0;
            for slot in &mut pending[start..] {
                match slot {
                    Ok(confirm) => match confirm.take_if_ready() {
                        Some(Ok(receipt)) => {
                            confirmed += 1;
                            *confirm = PendingConfirm::ready(Ok(receipt));
                        }
                        Some(Err(e)) => {
                            meters.meters.failed(Some(SENT_MESSAGES), &e, took);
                            *confirm = PendingConfirm::ready(Err(e));
                        }
                        None => {
                            let waiting = std::mem::replace(
                                confirm,
                                PendingConfirm::ready(Err(super::stand_in())),
                            );
                            if let Ok(observed) = Self::observe(meters, started, Ok(waiting)) {
                                *confirm = observed;
                            }
                        }
                    },
                    Err(e) => meters.meters.failed(Some(SENT_MESSAGES), e, took),
                }
            }
            meters.sent.increment(confirmed);
            meters
                .meters
                .duration
                .record_many(took.as_secs_f64(), confirmed as usize);
        });
    }

    fn send<'a, 'b, 'f>(
        &'a self,
        destination: &'b Destination,
        message: Message,
    ) -> BoxFuture<'f, Result<Receipt>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        if !recording() {
            return self.inner.send(destination, message);
        }
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.send(destination, message).await;
            self.with_meters(destination, |meters| meters.observe(started, &result));
            result
        })
    }

    async fn send_batch(
        &self,
        destination: &Destination,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Receipt>>> {
        if !recording() {
            return self.inner.send_batch(destination, messages).await;
        }
        let started = Instant::now();
        let results = self.inner.send_batch(destination, messages).await;
        self.with_meters(destination, |meters| match &results {
            Ok(results) => results.iter().for_each(|r| meters.observe(started, r)),
            Err(e) => meters.meters.failed(None, e, started.elapsed()),
        });
        results
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// The handles of one consumer, shared with the settle handles of its deliveries.
struct ConsumerMeters {
    receive: Meters,
    consumed: Counter,
    ack: Meters,
    nack: Meters,
}

impl ConsumerMeters {
    fn new(system: &'static str, queue: &str) -> Self {
        let receive = Meters::new(system, queue, "receive", "receive");
        let consumed = receive.counter(CONSUMED_MESSAGES);
        ConsumerMeters {
            receive,
            consumed,
            ack: Meters::new(system, queue, "settle", "ack"),
            nack: Meters::new(system, queue, "settle", "nack"),
        }
    }
}

struct MeteredConsumer {
    inner: Box<dyn Consumer>,
    meters: Arc<ConsumerMeters>,
    settle_durations: bool,
}

impl MeteredConsumer {
    fn received(&self, delivery: Delivery) -> Delivery {
        self.meters.consumed.increment(1);
        if !self.settle_durations {
            return delivery;
        }
        let meters = self.meters.clone();
        wrap_settle(delivery, |inner, _| {
            Box::new(MeteredSettle { inner, meters }) as Box<dyn Settle>
        })
    }

    fn finish(&self, started: Instant, result: Result<Delivery>) -> Result<Delivery> {
        match result {
            Ok(delivery) => {
                self.meters
                    .receive
                    .duration
                    .record(started.elapsed().as_secs_f64());
                Ok(self.received(delivery))
            }
            Err(e) => {
                self.meters
                    .receive
                    .failed(Some(CONSUMED_MESSAGES), &e, started.elapsed());
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Consumer for MeteredConsumer {
    fn receive<'a, 'f>(&'a mut self) -> BoxFuture<'f, Result<Delivery>>
    where
        'a: 'f,
        Self: 'f,
    {
        if !recording() {
            return self.inner.receive();
        }
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.receive().await;
            self.finish(started, result)
        })
    }

    fn receive_timeout<'a, 'f>(
        &'a mut self,
        timeout: Duration,
    ) -> BoxFuture<'f, Result<Option<Delivery>>>
    where
        'a: 'f,
        Self: 'f,
    {
        if !recording() {
            return self.inner.receive_timeout(timeout);
        }
        Box::pin(async move {
            let started = Instant::now();
            match self.inner.receive_timeout(timeout).await {
                Ok(Some(delivery)) => self.finish(started, Ok(delivery)).map(Some),
                Ok(None) => Ok(None),
                Err(e) => self.finish(started, Err(e)).map(Some),
            }
        })
    }

    fn try_receive(&mut self) -> Option<Result<Delivery>> {
        if !recording() {
            return self.inner.try_receive();
        }
        // Nothing waited, so there is no duration worth a clock read; the count is kept.
        match self.inner.try_receive()? {
            Ok(delivery) => Some(Ok(self.received(delivery))),
            Err(e) => {
                self.meters
                    .receive
                    .failed(Some(CONSUMED_MESSAGES), &e, Duration::ZERO);
                Some(Err(e))
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

struct MeteredSettle {
    inner: Settlement,
    meters: Arc<ConsumerMeters>,
}

fn timed(meters: &Meters, started: Instant, result: Result<()>) -> Result<()> {
    match &result {
        Ok(()) => meters.duration.record(started.elapsed().as_secs_f64()),
        Err(e) => meters.failed(None, e, started.elapsed()),
    }
    result
}

#[async_trait]
impl Settle for MeteredSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.ack().await;
        timed(&self.meters.ack, started, result)
    }

    async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.nack(nack).await;
        timed(&self.meters.nack, started, result)
    }

    fn abandon(self: Box<Self>) {
        drop(self.inner);
    }

    /// The backend's immediate ack, passed on and timed: a backend that acks at once keeps
    /// sparing the boxed ack future under this layer.
    fn try_ack(&mut self) -> Option<Result<()>> {
        let started = Instant::now();
        let acked = self.inner.ack_now()?;
        Some(timed(&self.meters.ack, started, acked))
    }
}

#[cfg(test)]
mod tests;
