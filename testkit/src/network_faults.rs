//! The network-fault scenario every networked backend runs through a [`Relay`]: during a
//! stream of sends and receives the relay cuts, stalls or slows the connections, then heals;
//! every call must end (complete, or fail with a temporary `Timeout` / `Connection` error)
//! within its bound, and every message whose send was confirmed must be received afterwards.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_core::{Backend, ConsumerOptions, Destination, Error, ErrorKind, Message, QueueSpec};

use crate::relay::Relay;
use crate::suite::Factory;
use crate::{check_failed, Waypoints};

/// What the relay does to the connections while the fault lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NetworkFault {
    /// Every connection closed, new ones refused.
    Cut,
    /// Nothing forwarded, every socket held open.
    Stall,
    /// Every chunk delayed by a latency and paced to a bandwidth cap.
    Slow {
        /// Added to every chunk.
        latency: Duration,
        /// Bytes per second per direction of each connection, if capped.
        bytes_per_sec: Option<u64>,
    },
}

impl NetworkFault {
    /// The three faults with the slow one at 200 ms and 32 KiB/s.
    pub fn all() -> [NetworkFault; 3] {
        [
            NetworkFault::Cut,
            NetworkFault::Stall,
            NetworkFault::Slow {
                latency: Duration::from_millis(200),
                bytes_per_sec: Some(32 * 1024),
            },
        ]
    }

    fn apply(self, relay: &Relay) {
        match self {
            NetworkFault::Cut => relay.cut(),
            NetworkFault::Stall => relay.stall(),
            NetworkFault::Slow {
                latency,
                bytes_per_sec,
            } => relay.slow(latency, bytes_per_sec),
        }
    }
}

impl fmt::Display for NetworkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkFault::Cut => f.write_str("cut"),
            NetworkFault::Stall => f.write_str("stall"),
            NetworkFault::Slow {
                latency,
                bytes_per_sec: Some(rate),
            } => write!(f, "slow ({latency:?}, {rate} B/s)"),
            NetworkFault::Slow { latency, .. } => write!(f, "slow ({latency:?})"),
        }
    }
}

/// The bounds and phases of one run; each backend derives the bounds from its own timeouts.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// A send (its confirm included) completes or fails within this.
    pub send: Duration,
    /// A receive (`receive_timeout` given [`Bounds::poll`]) completes or fails within this.
    pub receive: Duration,
    /// An ack completes or fails within this.
    pub ack: Duration,
    /// What each receive is given as its own timeout.
    pub poll: Duration,
    /// Traffic before the fault.
    pub before: Duration,
    /// How long the fault lasts.
    pub fault: Duration,
    /// Traffic after the heal, before the producer stops.
    pub after: Duration,
    /// From the producer's stop until every confirmed message must have been received.
    pub recovery: Duration,
}

/// The network-fault scenario, bound to the backend under test.
pub struct NetworkFaultScenario {
    relayed: Factory,
    direct: Factory,
    bounds: Bounds,
    spec: Arc<dyn Fn(QueueSpec) -> QueueSpec + Send + Sync>,
}

/// What one run saw, printed by the test.
#[derive(Debug, Default)]
pub struct NetworkFaultReport {
    /// The fault, as text.
    pub fault: String,
    /// Sends attempted.
    pub sends: usize,
    /// Sends confirmed.
    pub confirmed: usize,
    /// Failed sends, by error kind.
    pub send_errors: BTreeMap<String, usize>,
    /// The longest send.
    pub slowest_send: Duration,
    /// Failed receives, by error kind.
    pub receive_errors: BTreeMap<String, usize>,
    /// The longest receive.
    pub slowest_receive: Duration,
    /// Failed acks, by error kind.
    pub ack_errors: BTreeMap<String, usize>,
    /// Distinct messages received.
    pub received: usize,
    /// Deliveries of a message already received.
    pub duplicates: usize,
    /// Received though its send was not confirmed (the confirm was lost, not the message).
    pub unconfirmed_received: usize,
    /// The whole run.
    pub took: Duration,
}

impl fmt::Display for NetworkFaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} sends, {} confirmed, failed {:?} (slowest send {:?}); {} received, {} \
             duplicates, {} received unconfirmed; receive errors {:?} (slowest receive {:?}); \
             ack errors {:?}; {:?} in all",
            self.fault,
            self.sends,
            self.confirmed,
            self.send_errors,
            self.slowest_send,
            self.received,
            self.duplicates,
            self.unconfirmed_received,
            self.receive_errors,
            self.slowest_receive,
            self.ack_errors,
            self.took
        )
    }
}

/// What the producer and the consumer share.
#[derive(Default)]
struct Shared {
    /// Payload → confirmed.
    sent: Mutex<HashMap<String, bool>>,
    /// Payload → deliveries.
    received: Mutex<HashMap<String, usize>>,
    report: Mutex<NetworkFaultReport>,
    stop_sending: AtomicBool,
    producer_done: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a failed call failed as a network fault should make it fail.
fn typed(err: &Error) -> bool {
    matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connection) && err.is_temporary()
}

impl NetworkFaultScenario {
    /// The scenario with backends opened by `relayed` (through the relay) and `direct` (to
    /// declare and delete the queue), under `bounds`.
    pub fn new(relayed: Factory, direct: Factory, bounds: Bounds) -> NetworkFaultScenario {
        NetworkFaultScenario {
            relayed,
            direct,
            bounds,
            spec: Arc::new(|s| s),
        }
    }

    /// Adjust each run's queue declaration (e.g. a short visibility timeout on SQS).
    pub fn queue_spec(
        mut self,
        f: impl Fn(QueueSpec) -> QueueSpec + Send + Sync + 'static,
    ) -> Self {
        self.spec = Arc::new(f);
        self
    }

    /// One run: traffic, `fault` on `relay`, heal, then the check. `Err` names the call that
    /// overran its bound, failed untyped, or the confirmed messages never received.
    pub async fn run(
        &self,
        relay: &Relay,
        fault: NetworkFault,
        waypoints: &Waypoints,
    ) -> mailroom_core::Result<NetworkFaultReport> {
        let started = Instant::now();
        let b = &self.bounds;
        let setup = Duration::from_secs(30);
        let tag = fault.to_string();
        let at = |what: &str| waypoints.at(&tag, what.to_owned());
        at("connect directly");
        let direct = bounded(setup, "connect directly", (self.direct)()).await??;
        let queue = format!(
            "mr-netfault-{}-{}",
            tag.split(' ').next().unwrap_or("fault"),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        at("declare the queue");
        let spec = (self.spec)(QueueSpec::new(&queue));
        bounded(
            setup,
            "declare the queue",
            direct.topology().declare_queue(&spec),
        )
        .await??;
        at("connect through the relay");
        let relayed = bounded(setup, "connect through the relay", (self.relayed)()).await??;
        let shared = Arc::new(Shared::default());
        lock(&shared.report).fault = tag.clone();

        let producer = tokio::spawn(produce(
            relayed.clone(),
            queue.clone(),
            b.clone(),
            shared.clone(),
            waypoints.clone(),
        ));
        let consumer = tokio::spawn(consume(
            relayed.clone(),
            queue.clone(),
            b.clone(),
            shared.clone(),
            waypoints.clone(),
        ));

        at("traffic before the fault");
        tokio::time::sleep(b.before).await;
        at(&format!("{tag} on the relay"));
        fault.apply(relay);
        tokio::time::sleep(b.fault).await;
        relay.heal();
        at("traffic after the heal");
        tokio::time::sleep(b.after).await;
        shared.stop_sending.store(true, Ordering::SeqCst);
        at("waiting for the producer to stop");
        let produced = producer
            .await
            .map_err(|e| check_failed(format!("{tag}: the producer task: {e}")))
            .and_then(|r| r);
        if let Err(e) = produced {
            consumer.abort();
            return Err(e);
        }
        at("waiting for every confirmed message");
        let consumed = consumer
            .await
            .map_err(|e| check_failed(format!("{tag}: the consumer task: {e}")))?;
        let _ = relayed.close().await;
        let _ = direct.topology().delete_queue(&queue).await;
        let _ = direct.close().await;
        consumed?;

        let sent = lock(&shared.sent).clone();
        let received = lock(&shared.received).clone();
        let mut report = std::mem::take(&mut *lock(&shared.report));
        report.sends = sent.len();
        report.confirmed = sent.values().filter(|c| **c).count();
        report.received = received.len();
        report.duplicates = received.values().map(|n| n - 1).sum();
        report.unconfirmed_received = received
            .keys()
            .filter(|p| sent.get(*p) == Some(&false))
            .count();
        report.took = started.elapsed();
        Ok(report)
    }
}

/// `fut` within `bound`, or a check failure naming `what`.
async fn bounded<T>(
    bound: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> mailroom_core::Result<T> {
    tokio::time::timeout(bound, fut)
        .await
        .map_err(|_| check_failed(format!("{what} did not end within {bound:?}")))
}

/// Send numbered messages one after another until told to stop; each send must end within
/// its bound, and a failure must be typed.
async fn produce(
    backend: Arc<dyn Backend>,
    queue: String,
    b: Bounds,
    shared: Arc<Shared>,
    waypoints: Waypoints,
) -> mailroom_core::Result<()> {
    let producer = bounded(b.send, "open the producer", backend.producer()).await??;
    let dest = Destination::queue(&queue);
    let mut n = 0u64;
    while !shared.stop_sending.load(Ordering::SeqCst) {
        n += 1;
        let payload = format!("m{n}");
        waypoints.at("producer", format!("send {payload}"));
        lock(&shared.sent).insert(payload.clone(), false);
        let started = Instant::now();
        let sent = bounded(
            b.send,
            &format!("send {payload}"),
            producer.send(&dest, Message::new(payload.clone())),
        )
        .await?;
        let took = started.elapsed();
        {
            let mut r = lock(&shared.report);
            r.slowest_send = r.slowest_send.max(took);
            if let Err(e) = &sent {
                *r.send_errors
                    .entry(e.kind().as_str().to_owned())
                    .or_default() += 1;
            }
        }
        match sent {
            Ok(_receipt) => {
                lock(&shared.sent).insert(payload, true);
                // A steady stream, not a flood: the check drains what was sent.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) if typed(&e) => {
                // Back off a little, as an application would.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(check_failed(format!(
                    "send {payload} failed untyped ({:?}, temporary: {}): {e}",
                    e.kind(),
                    e.is_temporary()
                )))
            }
        }
    }
    waypoints.at("producer", "close");
    let _ = bounded(b.send, "close the producer", producer.close()).await?;
    waypoints.at("producer", "done");
    shared.producer_done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Receive and ack until the producer stopped and every confirmed message was received; each
/// receive and ack must end within its bound, and a failure must be typed.
async fn consume(
    backend: Arc<dyn Backend>,
    queue: String,
    b: Bounds,
    shared: Arc<Shared>,
    waypoints: Waypoints,
) -> mailroom_core::Result<()> {
    let mut consumer = bounded(
        b.receive + Duration::from_secs(20),
        "open the consumer",
        backend.consumer(&queue, ConsumerOptions::default()),
    )
    .await??;
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && shared.stop_sending.load(Ordering::SeqCst) {
            deadline = Some(Instant::now() + b.recovery);
        }
        let missing = missing(&shared);
        if deadline.is_some() && missing.is_empty() && shared.producer_done.load(Ordering::SeqCst) {
            break;
        }
        if let Some(d) = deadline {
            if Instant::now() > d {
                return Err(check_failed(format!(
                    "{} confirmed message(s) never received within {:?} of the producer's \
                     stop: {:?}",
                    missing.len(),
                    b.recovery,
                    &missing[..missing.len().min(10)]
                )));
            }
        }
        waypoints.at("consumer", "receive");
        let started = Instant::now();
        let got = bounded(b.receive, "receive", consumer.receive_timeout(b.poll)).await?;
        let took = started.elapsed();
        {
            let mut r = lock(&shared.report);
            r.slowest_receive = r.slowest_receive.max(took);
        }
        let delivery = match got {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) if typed(&e) => {
                *lock(&shared.report)
                    .receive_errors
                    .entry(e.kind().as_str().to_owned())
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                return Err(check_failed(format!(
                    "receive failed untyped ({:?}, temporary: {}): {e}",
                    e.kind(),
                    e.is_temporary()
                )))
            }
        };
        let payload = String::from_utf8_lossy(delivery.message().payload()).into_owned();
        *lock(&shared.received).entry(payload.clone()).or_default() += 1;
        waypoints.at("consumer", format!("ack {payload}"));
        match bounded(b.ack, &format!("ack {payload}"), delivery.ack()).await? {
            Ok(()) => {}
            // An ack may also fail `Closed`: the fault killed the channel the delivery came
            // on, which the backend can notice before the ack is made (RabbitMQ retires a
            // connection it lost), and the broker redelivers the message — the contract the
            // RabbitMQ reconnect and unresponsive-broker tests check.
            Err(e) if typed(&e) || e.kind() == ErrorKind::Closed => {
                *lock(&shared.report)
                    .ack_errors
                    .entry(e.kind().as_str().to_owned())
                    .or_default() += 1;
            }
            Err(e) => {
                return Err(check_failed(format!(
                    "ack {payload} failed untyped ({:?}, temporary: {}): {e}",
                    e.kind(),
                    e.is_temporary()
                )))
            }
        }
    }
    waypoints.at("consumer", "close");
    let _ = bounded(b.receive, "close the consumer", consumer.close()).await?;
    Ok(())
}

/// Confirmed payloads not received yet.
fn missing(shared: &Shared) -> Vec<String> {
    let received = lock(&shared.received);
    let mut missing: Vec<String> = lock(&shared.sent)
        .iter()
        .filter(|(p, confirmed)| **confirmed && !received.contains_key(*p))
        .map(|(p, _)| p.clone())
        .collect();
    missing.sort();
    missing
}
