//! The soak scenario: several producers and consumers on one queue at a steady rate for a long
//! time, checking that nothing confirmed is lost, counting duplicates, recording end-to-end
//! latency and sampling this process's resident memory, so that a leak in the client (buffers,
//! confirm books, settle handles that are never freed) shows as a climbing curve.
//!
//! It is not part of CI (it runs for minutes per broker): `scripts/soak.sh` runs it through the
//! bench crate's `soak` example. A short run of it is tested so that the code path stays sound.
//!
//! The clients are at-least-once, as an application would be: a send whose enqueue or confirm
//! fails is sent again; consumers ack every delivery and duplicates are counted, not hidden.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use mailroom_core::{
    Backend, ConsumerOptions, Destination, Error, Message, PendingConfirm, Producer, QueueSpec,
    Result,
};
use tokio::sync::mpsc;

use crate::{check_failed, Waypoints};

mod ledger;
mod report;
mod rss;

use ledger::Ledger;

pub use report::{LatencyPercentiles, RssSample, SoakReport};
pub use rss::resident_kib;

/// The soak's parameters; [`SoakScenario::run`] runs it against one backend.
#[derive(Debug, Clone)]
pub struct SoakScenario {
    producers: usize,
    consumers: usize,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    sample_every: Duration,
    drain_bound: Duration,
}

/// Producers send in steps this far apart; at a few thousand msgs/s that is a handful of
/// messages per step, which keeps the rate steady without a precise timer.
const TICK: Duration = Duration::from_millis(10);
/// The payload starts with the send time (µs since the run started, which the consumers measure
/// from), the producer's index and its sequence number, all big-endian.
const STAMP_BYTES: usize = 8 + 4 + 8;
/// Confirms a producer may have outstanding before its sending waits for them: bounds the
/// scenario's own memory, so that the curve shows the client's.
const CONFIRM_WINDOW: usize = 4096;
/// How often a failed message is sent again before the run gives it up.
const RESEND_ATTEMPTS: usize = 20;

impl SoakScenario {
    /// `producers` and `consumers` on one queue, `rate` messages per second in all, for
    /// `duration`; 1 KiB payloads, a memory sample every 5 s, at most 120 s to drain.
    pub fn new(producers: usize, consumers: usize, rate: f64, duration: Duration) -> Self {
        SoakScenario {
            producers: producers.max(1),
            consumers: consumers.max(1),
            rate: rate.max(1.0),
            duration,
            payload_bytes: 1024,
            sample_every: Duration::from_secs(5),
            drain_bound: Duration::from_secs(120),
        }
    }

    /// Payload size (at least the 20-byte stamp: send time, producer, sequence number).
    pub fn payload_bytes(mut self, bytes: usize) -> Self {
        self.payload_bytes = bytes.max(STAMP_BYTES);
        self
    }

    /// How often resident memory is sampled.
    pub fn sample_every(mut self, every: Duration) -> Self {
        self.sample_every = every.max(Duration::from_millis(10));
        self
    }

    /// How long the consumers may take, after the last send, to receive every confirmed message.
    pub fn drain_bound(mut self, bound: Duration) -> Self {
        self.drain_bound = bound;
        self
    }

    /// Run it on a fresh queue of `backend` (partitioned one per consumer where the backend
    /// partitions queues, so that every consumer gets a share). The run is bounded by its
    /// duration plus the drain bound plus a minute; overrunning that fails naming where it
    /// waited.
    pub async fn run(&self, backend: Arc<dyn Backend>) -> Result<SoakReport> {
        let waypoints = Waypoints::default();
        let bound = self.duration + self.drain_bound + Duration::from_secs(60);
        match tokio::time::timeout(bound, self.run_inner(backend, &waypoints)).await {
            Ok(report) => report,
            Err(_) => Err(check_failed(format!(
                "the soak did not finish within {bound:?}; it was waiting in: {}",
                waypoints.report()
            ))),
        }
    }

    async fn run_inner(
        &self,
        backend: Arc<dyn Backend>,
        waypoints: &Waypoints,
    ) -> Result<SoakReport> {
        let started = Instant::now();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let queue = format!("mr-soak-{}", &suffix[..12]);
        let mut spec = QueueSpec::new(&queue);
        if backend.capabilities().partitioned_queues && self.consumers > 1 {
            spec = spec.partitions(self.consumers as u32);
        }
        waypoints.at("main", "declaring the queue");
        backend.topology().declare_queue(&spec).await?;

        let expected =
            (self.rate * self.duration.as_secs_f64() * 1.2) as usize / self.producers + 64;
        let shared = Arc::new(Shared::new(started, Ledger::new(self.producers, expected)));
        let sampler = tokio::spawn(sample_memory(shared.clone(), self.sample_every));

        let mut consumers = Vec::with_capacity(self.consumers);
        for i in 0..self.consumers {
            waypoints.at("main", format!("opening consumer {i}"));
            let consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
            consumers.push(tokio::spawn(consume(
                consumer,
                shared.clone(),
                waypoints.clone(),
                format!("consumer {i}"),
            )));
        }

        let mut producers = Vec::with_capacity(self.producers);
        for i in 0..self.producers {
            waypoints.at("main", format!("opening producer {i}"));
            let producer: Arc<dyn Producer> = Arc::from(backend.producer().await?);
            producers.push(tokio::spawn(produce(
                producer,
                i,
                Destination::queue(&queue),
                self.rate / self.producers as f64,
                self.duration,
                self.payload_bytes,
                shared.clone(),
                waypoints.clone(),
                format!("producer {i}"),
            )));
        }
        for (i, producer) in producers.into_iter().enumerate() {
            waypoints.at("main", format!("waiting for producer {i}"));
            producer
                .await
                .map_err(|e| check_failed(format!("producer {i} failed: {e}")))??;
        }
        let sending = started.elapsed();

        waypoints.at("main", "draining: waiting for every confirmed message");
        let drain_deadline = Instant::now() + self.drain_bound;
        while Instant::now() < drain_deadline && shared.missing() > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        shared.stop.store(true, Ordering::SeqCst);
        let mut latency = new_histogram()?;
        let mut ack_failures = 0;
        for (i, consumer) in consumers.into_iter().enumerate() {
            waypoints.at("main", format!("waiting for consumer {i}"));
            let (histogram, failed) = consumer
                .await
                .map_err(|e| check_failed(format!("consumer {i} failed: {e}")))??;
            latency
                .add(&histogram)
                .map_err(|e| check_failed(format!("latency histograms do not merge: {e}")))?;
            ack_failures += failed;
        }
        sampler.abort();
        let rss = std::mem::take(&mut *lock(&shared.rss));
        let ledger = lock(&shared.ledger);
        if ledger.foreign() > 0 {
            eprintln!(
                "soak: {} message(s) on the queue were not sent by this run",
                ledger.foreign()
            );
        }
        Ok(SoakReport {
            sending,
            total: started.elapsed(),
            sent: shared.sent.load(Ordering::SeqCst),
            confirmed: ledger.confirmed(),
            send_failures: shared.send_failures.load(Ordering::SeqCst),
            received: ledger.received(),
            duplicates: ledger.duplicates(),
            lost: ledger.missing(),
            ack_failures,
            latency: percentiles(&latency),
            rss,
        })
    }
}

/// What the scenario's tasks share.
struct Shared {
    started: Instant,
    stop: AtomicBool,
    sent: AtomicUsize,
    send_failures: AtomicUsize,
    ledger: Mutex<Ledger>,
    rss: Mutex<Vec<RssSample>>,
}

impl Shared {
    fn new(started: Instant, ledger: Ledger) -> Self {
        Shared {
            started,
            stop: AtomicBool::new(false),
            sent: AtomicUsize::new(0),
            send_failures: AtomicUsize::new(0),
            ledger: Mutex::new(ledger),
            rss: Mutex::new(Vec::new()),
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Confirmed messages not yet received.
    fn missing(&self) -> usize {
        lock(&self.ledger).missing()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| check_failed(format!("latency histogram: {e}")))
}

fn percentiles(h: &Histogram<u64>) -> LatencyPercentiles {
    if h.is_empty() {
        return LatencyPercentiles::default();
    }
    LatencyPercentiles {
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        p9999: h.value_at_quantile(0.9999),
        max: h.max(),
    }
}

async fn sample_memory(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Some(kib) = resident_kib() {
            lock(&shared.rss).push(RssSample {
                at: shared.started.elapsed(),
                kib,
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    producer: Arc<dyn Producer>,
    index: usize,
    destination: Destination,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    shared: Arc<Shared>,
    waypoints: Waypoints,
    me: String,
) -> Result<()> {
    let filler = Bytes::from(vec![b'x'; payload_bytes - STAMP_BYTES]);
    let (confirm_tx, confirm_rx) = mpsc::channel::<(Sent, Message, PendingConfirm)>(CONFIRM_WINDOW);
    let confirmer = tokio::spawn(await_confirms(
        producer.clone(),
        destination.clone(),
        confirm_rx,
        shared.clone(),
        waypoints.clone(),
        me.clone(),
    ));
    let per_tick = rate * TICK.as_secs_f64();
    let mut owed = 0.0;
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = shared.started + duration;
    while Instant::now() < until {
        tick.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let mut payload = BytesMut::with_capacity(payload_bytes);
            payload.put_u64(shared.now_us());
            payload.put_u32(index as u32);
            payload.put_u64(seq);
            payload.extend_from_slice(&filler);
            let message = Message::new(payload.freeze());
            let sent = Sent { index, seq };
            seq += 1;
            shared.sent.fetch_add(1, Ordering::Relaxed);
            waypoints.at(&me, "enqueue");
            match producer.enqueue(&destination, message.clone()).await {
                Ok(confirm) => {
                    waypoints.at(&me, "room in the confirm window");
                    if confirm_tx.send((sent, message, confirm)).await.is_err() {
                        return Err(check_failed(format!("{me}: its confirm task ended early")));
                    }
                }
                Err(e) => {
                    shared.send_failures.fetch_add(1, Ordering::Relaxed);
                    resend(&*producer, &destination, message, sent, e, &shared).await;
                }
            }
        }
    }
    drop(confirm_tx);
    waypoints.at(&me, "waiting for its last confirms");
    confirmer
        .await
        .map_err(|e| check_failed(format!("{me}: confirm task failed: {e}")))?;
    waypoints.at(&me, "flush and close");
    producer.flush().await?;
    producer.close().await
}

async fn await_confirms(
    producer: Arc<dyn Producer>,
    destination: Destination,
    mut confirms: mpsc::Receiver<(Sent, Message, PendingConfirm)>,
    shared: Arc<Shared>,
    waypoints: Waypoints,
    me: String,
) {
    let me = format!("{me} confirms");
    while let Some((sent, message, confirm)) = confirms.recv().await {
        waypoints.at(&me, "a confirm");
        match confirm.await {
            Ok(_) => lock(&shared.ledger).confirm(sent.index, sent.seq),
            Err(e) => {
                shared.send_failures.fetch_add(1, Ordering::Relaxed);
                resend(&*producer, &destination, message, sent, e, &shared).await;
            }
        }
    }
}

/// Send a message whose send failed again, as an at-least-once application would, a bounded
/// number of times; a message never confirmed is not counted as lost (the application knew).
async fn resend(
    producer: &dyn Producer,
    destination: &Destination,
    message: Message,
    sent: Sent,
    first: Error,
    shared: &Shared,
) {
    let mut last = first;
    for _ in 0..RESEND_ATTEMPTS {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match producer.send(destination, message.clone()).await {
            Ok(_) => {
                lock(&shared.ledger).confirm(sent.index, sent.seq);
                return;
            }
            Err(e) => {
                shared.send_failures.fetch_add(1, Ordering::Relaxed);
                last = e;
            }
        }
    }
    report_given_up(&message, &last);
}

/// The testkit has no logging dependency: a message given up after its resends is reported on
/// stderr, which the soak's runner shows.
fn report_given_up(message: &Message, error: &Error) {
    eprintln!(
        "soak: gave up sending {} after {RESEND_ATTEMPTS} attempts: {error}",
        message.id()
    );
}

async fn consume(
    mut consumer: Box<dyn mailroom_core::Consumer>,
    shared: Arc<Shared>,
    waypoints: Waypoints,
    me: String,
) -> Result<(Histogram<u64>, usize)> {
    let mut latency = new_histogram()?;
    let mut ack_failures = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        waypoints.at(&me, "receive");
        match consumer.receive_timeout(Duration::from_millis(500)).await {
            Ok(Some(delivery)) => {
                match Stamp::read(delivery.message().payload()) {
                    Some(stamp) => {
                        if lock(&shared.ledger).receive(stamp.producer, stamp.seq) {
                            let waited = shared.now_us().saturating_sub(stamp.sent_us);
                            let _ = latency.record(waited.max(1));
                        }
                    }
                    None => eprintln!("soak: {me}: a message without the soak's stamp"),
                }
                waypoints.at(&me, "ack");
                if delivery.ack().await.is_err() {
                    ack_failures += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // A consumer that keeps failing is part of what the soak reports; it backs off
                // as an application would rather than spinning.
                eprintln!("soak: {me}: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    waypoints.at(&me, "close");
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(15), consumer.close()).await {
        eprintln!("soak: {me}: close failed: {e}");
    }
    Ok((latency, ack_failures))
}

/// Which message a confirm is for.
#[derive(Clone, Copy)]
struct Sent {
    index: usize,
    seq: u64,
}

/// The stamp at the start of a soak payload.
struct Stamp {
    sent_us: u64,
    producer: usize,
    seq: u64,
}

impl Stamp {
    fn read(payload: &[u8]) -> Option<Stamp> {
        let stamp = payload.get(..STAMP_BYTES)?;
        Some(Stamp {
            sent_us: u64::from_be_bytes(stamp[..8].try_into().ok()?),
            producer: u32::from_be_bytes(stamp[8..12].try_into().ok()?) as usize,
            seq: u64::from_be_bytes(stamp[12..20].try_into().ok()?),
        })
    }
}
