//! What topic-pattern routing costs a subscriber, natively (the broker routes) or client-side
//! (the client reads the whole topic and drops what its binding does not match).
//!
//! The workload, the same on every backend that has topic exchanges: a topic exchange gets
//! [`PUBLISHED`] messages of [`PAYLOAD_BYTES`] bytes, sent in runs of [`RUN`] per routing key
//! cycling over [`KEYS`] keys (`order.r0.created` … `order.r9.created`); one queue per key is
//! bound with `order.rK.*` (ten services, each taking its region: every message is routed
//! somewhere, as a broker that refuses unroutable sends requires), so each takes 1 message in
//! 10. The exchange is filled first, then the first queue's consumer drains its share, acking
//! each delivery (the other queues are not read); the figure is the messages delivered per
//! second from its first delivery to its last (group joins and connection set-up excluded).
//! A broker that routes natively hands the subscriber only its share; a client-side router's
//! subscriber reads every record the exchange holds to find it.
//!
//! Brokers differ in how fast they deliver at all, so each round also sends the same share
//! straight to a fresh queue and drains it the same way: routed ÷ straight is what routing
//! costs the subscriber on that broker (about 1 where the broker routes; below 1 by what
//! reading the other nine tenths costs where the client does). Rounds alternate which of the
//! two goes first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{
    Backend, Binding, Capability, ConsumerOptions, Destination, Error, ErrorKind, ExchangeKind,
    ExchangeSpec, Implementation, Message, QueueSpec, Result,
};

/// Messages sent to the exchange per round.
pub const PUBLISHED: usize = 10_000;
/// Routing keys cycled over; the binding matches one of them.
pub const KEYS: usize = 10;
/// Consecutive messages sent with one routing key (one batch send).
pub const RUN: usize = 100;
/// Bytes of each payload.
pub const PAYLOAD_BYTES: usize = 100;
/// Rounds measured per backend (the figure is their median, the spread their range).
pub const ROUNDS: usize = 3;
/// The pattern the measured subscriber's queue is bound with (queue K is bound with
/// `order.rK.*`).
pub const PATTERN: &str = "order.r0.*";
/// The longest a round may take (fill and drain), so a slow broker cannot hold up `compare`.
pub const ROUND_LIMIT: Duration = Duration::from_secs(60);

/// The routing-cost figure of one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingCost {
    /// How the backend implements topic exchanges.
    pub implementation: Implementation,
    /// Messages sent to the exchange per round.
    pub published: usize,
    /// Messages the subscriber's binding matches, delivered per round.
    pub delivered: usize,
    /// Routed: delivered msgs/s of the subscriber's share through the exchange, per round.
    pub rounds: Vec<f64>,
    /// Straight: delivered msgs/s of the same share sent straight to a queue, per round.
    pub straight: Vec<f64>,
    /// Why the rounds stopped early, if one failed.
    pub error: Option<String>,
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn range(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

impl RoutingCost {
    /// The median of the routed rounds' delivered msgs/s.
    pub fn median(&self) -> Option<f64> {
        median(&self.rounds)
    }

    /// The lowest and highest routed round.
    pub fn range(&self) -> Option<(f64, f64)> {
        range(&self.rounds)
    }

    /// The median of the straight rounds' delivered msgs/s.
    pub fn straight_median(&self) -> Option<f64> {
        median(&self.straight)
    }

    /// The lowest and highest straight round.
    pub fn straight_range(&self) -> Option<(f64, f64)> {
        range(&self.straight)
    }

    /// Routed ÷ straight, per round (each round's pair ran back to back).
    pub fn ratios(&self) -> Vec<f64> {
        self.rounds
            .iter()
            .zip(&self.straight)
            .filter(|(_, s)| **s > 0.0)
            .map(|(r, s)| r / s)
            .collect()
    }

    /// The median of [`RoutingCost::ratios`]: what routing costs the subscriber on this broker.
    pub fn ratio(&self) -> Option<f64> {
        median(&self.ratios())
    }

    /// The lowest and highest of [`RoutingCost::ratios`].
    pub fn ratio_range(&self) -> Option<(f64, f64)> {
        range(&self.ratios())
    }

    /// Records the subscriber's client reads per round to find its share: the whole exchange
    /// when routing is client-side (every record of the topic), its share when native.
    pub fn records_read(&self) -> usize {
        match self.implementation {
            Implementation::ClientSide => self.published,
            Implementation::Native => self.delivered,
        }
    }
}

/// Measure `backend`, or `None` when it has no topic exchanges.
pub async fn measure(backend: &Arc<dyn Backend>) -> Option<RoutingCost> {
    let implementation = backend
        .capabilities()
        .implementation(Capability::Exchange(ExchangeKind::Topic))?;
    let mut cost = RoutingCost {
        implementation,
        published: PUBLISHED,
        delivered: PUBLISHED / KEYS,
        rounds: Vec::new(),
        straight: Vec::new(),
        error: None,
    };
    for round in 0..ROUNDS {
        let names = Names::fresh(round);
        let work = async {
            // Alternate the order, so a load that drifts during the round favours neither.
            if round % 2 == 0 {
                let routed = routed(backend.as_ref(), &names).await?;
                Ok::<_, Error>((routed, straight(backend.as_ref(), &names).await?))
            } else {
                let straight = straight(backend.as_ref(), &names).await?;
                Ok((routed(backend.as_ref(), &names).await?, straight))
            }
        };
        let outcome = tokio::time::timeout(ROUND_LIMIT, work).await;
        cleanup(backend.as_ref(), &names).await;
        match outcome {
            Ok(Ok((routed, straight))) => {
                cost.rounds.push(routed);
                cost.straight.push(straight);
            }
            Ok(Err(e)) => {
                cost.error = Some(e.to_string());
                break;
            }
            Err(_) => {
                cost.error = Some(format!(
                    "round {round} did not finish within {ROUND_LIMIT:?}"
                ));
                break;
            }
        }
    }
    Some(cost)
}

/// One round's exchange, queues (one per key; the first is measured) and the straight queue,
/// unique to it.
struct Names {
    exchange: String,
    queues: Vec<String>,
    straight: String,
}

impl Names {
    fn fresh(round: usize) -> Self {
        let unique = mailroom_core::MessageId::generate()
            .to_string()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect::<String>();
        Names {
            exchange: format!("routing-cost-{unique}-{round}-ex"),
            queues: (0..KEYS)
                .map(|k| format!("routing-cost-{unique}-{round}-q{k}"))
                .collect(),
            straight: format!("routing-cost-{unique}-{round}-straight"),
        }
    }
}

async fn cleanup(backend: &dyn Backend, names: &Names) {
    let topology = backend.topology();
    for queue in names.queues.iter().chain([&names.straight]) {
        let _ = topology.delete_queue(queue).await;
    }
    let _ = topology.delete_exchange(&names.exchange).await;
}

/// Send `runs` batches of [`RUN`] messages, each to the destination `to(run)` gives.
async fn fill(backend: &dyn Backend, runs: usize, to: impl Fn(usize) -> Destination) -> Result<()> {
    let producer = backend.producer().await?;
    let payload = vec![b'x'; PAYLOAD_BYTES];
    for run in 0..runs {
        let batch = (0..RUN).map(|_| Message::new(payload.clone())).collect();
        for sent in producer.send_batch(&to(run), batch).await? {
            sent?;
        }
    }
    producer.close().await
}

/// Receive and ack `want` messages from `queue`: delivered msgs/s from the first to the last.
async fn drain(backend: &dyn Backend, queue: &str, want: usize) -> Result<f64> {
    let mut consumer = backend.consumer(queue, ConsumerOptions::default()).await?;
    let mut first = None;
    let mut got = 0;
    while got < want {
        let Some(delivery) = consumer.receive_timeout(Duration::from_secs(20)).await? else {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the subscriber of '{queue}' got {got} of its {want} messages, then \
                     nothing for 20 s"
                ),
            ));
        };
        first.get_or_insert_with(Instant::now);
        delivery.ack().await?;
        got += 1;
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    consumer.close().await?;
    // The first delivery starts the clock, so `want - 1` deliveries fill the time measured.
    Ok((want - 1) as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Declare and bind, fill the exchange, then drain the measured queue's share.
async fn routed(backend: &dyn Backend, names: &Names) -> Result<f64> {
    let topology = backend.topology();
    topology
        .declare_exchange(&ExchangeSpec::new(&names.exchange, ExchangeKind::Topic))
        .await?;
    for (k, queue) in names.queues.iter().enumerate() {
        topology.declare_queue(&QueueSpec::new(queue)).await?;
        let pattern = format!("order.r{k}.*");
        topology
            .bind(&Binding::pattern(&names.exchange, queue, &pattern)?)
            .await?;
    }
    fill(backend, PUBLISHED / RUN, |run| {
        Destination::exchange(&names.exchange, format!("order.r{}.created", run % KEYS))
    })
    .await?;
    drain(backend, &names.queues[0], PUBLISHED / KEYS).await
}

/// The same share sent straight to a queue of its own, then drained.
async fn straight(backend: &dyn Backend, names: &Names) -> Result<f64> {
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&names.straight))
        .await?;
    fill(backend, PUBLISHED / KEYS / RUN, |_| {
        Destination::queue(&names.straight)
    })
    .await?;
    drain(backend, &names.straight, PUBLISHED / KEYS).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ranges_ratios_and_records_read() {
        let mut cost = RoutingCost {
            implementation: Implementation::ClientSide,
            published: 10_000,
            delivered: 1_000,
            rounds: vec![300.0, 100.0, 200.0],
            straight: vec![600.0, 400.0, 200.0],
            error: None,
        };
        assert_eq!(cost.median(), Some(200.0));
        assert_eq!(cost.range(), Some((100.0, 300.0)));
        assert_eq!(cost.straight_median(), Some(400.0));
        assert_eq!(
            cost.ratios(),
            vec![0.5, 0.25, 1.0],
            "pairs of the same round"
        );
        assert_eq!(cost.ratio(), Some(0.5));
        assert_eq!(cost.ratio_range(), Some((0.25, 1.0)));
        assert_eq!(cost.records_read(), 10_000, "client-side: the whole topic");
        cost.implementation = Implementation::Native;
        assert_eq!(cost.records_read(), 1_000, "native: only its share");
        cost.rounds.clear();
        assert_eq!(cost.median(), None);
        assert_eq!(cost.ratio(), None);
    }
}
