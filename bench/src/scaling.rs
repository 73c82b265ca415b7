//! How cost grows with work: a sweep of producers/consumers (1 → 2 → 4 → 8) and of payload size
//! (100 B → 1 KiB → 16 KiB → 256 KiB) on one backend, each point measured twice:
//!
//! 1. **Saturated, closed loop**: N producers send as fast as confirms and an end-to-end credit
//!    allow (a message takes a credit when sent and gives it back when a consumer received and
//!    acked it), N consumers receive and ack. Throughput is what the consumers received per
//!    second after a warm-up. The credit bounds the queue, so the figure is the broker's
//!    sustained rate, not how fast it swallows a backlog.
//! 2. **Open loop at a fraction of that** (`load_fraction`, 0.5 by default) through the
//!    harness's runner (intended send times, no coordinated omission): end-to-end p50 and p99.
//!
//! A payload larger than the backend's declared `max_message_size` (SQS: 256 KiB including
//! the timestamp attribute) is replaced by the largest whole KiB that fits, and the point says
//! so. Each phase gets a fresh topic; a Kafka topic has as many partitions as consumers so
//! every consumer has one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use mailroom_core::{Error, ErrorKind, Result};

use crate::driver::{now_us, Driver, Outgoing, TopicPlan, SENT_AT_HEADER};
use crate::result::scaling::{ScalingAxis, ScalingPoint, ScalingSeries, ScalingSettings};
use crate::runner::{self, RunOptions};
use crate::workload::{Plan, Workload};

/// What a sweep measures and how long each step takes.
#[derive(Debug, Clone)]
pub struct ScalingOptions {
    /// Producer (and consumer) counts on the clients curve.
    pub counts: Vec<u32>,
    /// Payload sizes on the payload curve (one producer, one consumer).
    pub sizes: Vec<usize>,
    /// Payload size on the clients curve.
    pub clients_message_size: usize,
    /// Measured time per phase.
    pub step: Duration,
    /// Warm-up per phase, counted from the first message received.
    pub warmup: Duration,
    /// The latency run's rate, as a fraction of the saturated throughput.
    pub load_fraction: f64,
    /// Payload bytes in flight in the saturated phase (at least 16 messages, at most 4096).
    pub in_flight_bytes: usize,
}

impl Default for ScalingOptions {
    fn default() -> Self {
        ScalingOptions {
            counts: vec![1, 2, 4, 8],
            sizes: vec![100, 1024, 16 * 1024, 256 * 1024],
            clients_message_size: 1024,
            step: Duration::from_secs(2),
            warmup: Duration::from_secs(1),
            load_fraction: 0.5,
            in_flight_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Longest the first message of a phase may take to arrive (a Kafka group join, a cold queue).
const FIRST_MESSAGE_WITHIN: Duration = Duration::from_secs(30);
/// Most confirms one producer awaits at once in the saturated phase.
const CONFIRM_WINDOW: usize = 4096;
/// How long a consumer waits in one receive before it looks at the stop flag.
const RECEIVE_SLICE: Duration = Duration::from_millis(100);
/// Bytes the harness adds to a message besides its payload (the timestamp header and a key),
/// as [`crate::driver::MailroomDriver`]'s check counts them.
const HEADER_ALLOWANCE: usize = SENT_AT_HEADER.len() + 64;

/// A payload size as the curve's label: `100 B`, `16 KiB`.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// The largest whole-KiB payload under `max_message_size` with the harness's header.
fn fitting(size: usize, max_message_size: Option<usize>) -> usize {
    match max_message_size {
        Some(max) if size + HEADER_ALLOWANCE > max => {
            (max.saturating_sub(HEADER_ALLOWANCE) / 1024 * 1024).max(1)
        }
        _ => size,
    }
}

fn plan_for(
    producers: u32,
    partitions: u32,
    size: usize,
    rate: u64,
    options: &ScalingOptions,
    warmup: Duration,
) -> Result<Plan> {
    let workload = Workload {
        name: format!(
            "scaling: {producers} producer(s) / {producers} consumer(s) / {}",
            size_label(size)
        ),
        topics: 1,
        partitions_per_topic: i64::from(partitions),
        key_distributor: Default::default(),
        message_size: size as i64,
        use_randomized_payloads: false,
        random_bytes_ratio: 0.0,
        randomized_payload_pool_size: 0,
        payload_file: None,
        subscriptions_per_topic: 1,
        producers_per_topic: i64::from(producers),
        consumer_per_subscription: i64::from(producers),
        producer_rate: rate.max(1) as i64,
        producer_start_rate: 10_000,
        acceptable_backlog: 10_000,
        consumer_backlog_size_gb: 0.0,
        test_duration_minutes: 0.0,
        warmup_duration_minutes: None,
        test_duration_seconds: Some(options.step.as_secs_f64()),
        warmup_duration_seconds: Some(warmup.as_secs_f64()),
    };
    workload.plan("scaling sweep (built in)", None)
}

/// What the saturated phase found.
struct Saturation {
    /// Messages received per second after the warm-up.
    rate: f64,
    /// From the start until every consumer had received a message (the group had formed).
    first_message: Duration,
}

fn fresh_topic(partitions: u32) -> TopicPlan {
    let id: String = mailroom_core::MessageId::generate()
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    let name = format!("mr-scaling-{id}");
    TopicPlan {
        subscriptions: vec![format!("{name}-sub0")],
        name,
        partitions,
    }
}

/// The saturated, credit-bounded closed loop on a fresh topic.
async fn saturate(
    driver: &Arc<dyn Driver>,
    plan: &Plan,
    options: &ScalingOptions,
) -> Result<Saturation> {
    let topic = fresh_topic(plan.partitions);
    driver.create(&topic).await?;
    let outcome = saturate_on(driver, plan, options, &topic).await;
    if let Err(e) = driver.delete(&topic).await {
        tracing::warn!("scaling: cannot delete {}: {e}", topic.name);
    }
    outcome
}

async fn saturate_on(
    driver: &Arc<dyn Driver>,
    plan: &Plan,
    options: &ScalingOptions,
    topic: &TopicPlan,
) -> Result<Saturation> {
    let size = plan.message_size().max(1);
    let credit_total = (options.in_flight_bytes / size).clamp(16, 4096);
    let credit = Arc::new(Semaphore::new(credit_total));
    let received = Arc::new(AtomicU64::new(0));
    // Consumers that have had a message: the measurement waits for all of them.
    let serving = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let note_error = |slot: &Arc<Mutex<Option<String>>>, e: &Error| {
        if let Ok(mut first) = slot.lock() {
            first.get_or_insert_with(|| e.to_string());
        }
    };

    let mut consumers = Vec::new();
    for _ in 0..plan.consumers {
        let mut consumer = driver.consumer(topic, &topic.subscriptions[0]).await?;
        let (received, serving, credit, stop, errors) = (
            received.clone(),
            serving.clone(),
            credit.clone(),
            stop.clone(),
            first_error.clone(),
        );
        consumers.push(tokio::spawn(async move {
            let mut served = false;
            while !stop.load(Ordering::Acquire) {
                match consumer.receive(RECEIVE_SLICE).await {
                    Ok(Some(_)) => {
                        if !served {
                            served = true;
                            serving.fetch_add(1, Ordering::Relaxed);
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        credit.add_permits(1);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        note_error(&errors, &e);
                        break;
                    }
                }
            }
            let _ = consumer.close().await;
        }));
    }
    let mut producers = Vec::new();
    for p in 0..plan.producers as usize {
        let producer = driver.producer(topic).await?;
        let (credit, stop, errors) = (credit.clone(), stop.clone(), first_error.clone());
        let payloads = plan.payloads.clone();
        producers.push(tokio::spawn(async move {
            let mut confirms = FuturesUnordered::new();
            let mut i = p;
            'send: while !stop.load(Ordering::Acquire) {
                // A credit comes back when a consumer has the message: the queue stays bounded.
                let Ok(permit) = credit.acquire().await else {
                    break;
                };
                permit.forget();
                let message = Outgoing {
                    key: None,
                    payload: payloads[i % payloads.len()].clone(),
                    intended_us: now_us(),
                };
                i += 1;
                match producer.send(message).await {
                    Ok(confirm) => confirms.push(confirm),
                    Err(e) => {
                        note_error(&errors, &e);
                        break;
                    }
                }
                while confirms.len() >= CONFIRM_WINDOW {
                    if let Some(Err(e)) = confirms.next().await {
                        note_error(&errors, &e);
                        break 'send;
                    }
                }
            }
            while let Some(outcome) = confirms.next().await {
                if let Err(e) = outcome {
                    note_error(&errors, &e);
                }
            }
            let _ = producer.close().await;
        }));
    }

    let measured = async {
        let start = Instant::now();
        let failed = |e: &Arc<Mutex<Option<String>>>| e.lock().ok().and_then(|e| e.clone());
        // Every consumer, not just one: a Kafka group of several members forms in rounds,
        // and a round revokes the partitions of the members that already had some until the
        // last member has rejoined (1-3 s with librdkafka). Measured from the first message,
        // a 4-consumer point's whole window fell in such a round: 0 msgs/s, and its latency
        // run at the 1 msg/s floor then confirmed nothing in its window.
        let consumers = u64::from(plan.consumers);
        while serving.load(Ordering::Relaxed) < consumers {
            if let Some(e) = failed(&first_error) {
                return Err(Error::new(ErrorKind::Broker, e));
            }
            if start.elapsed() > FIRST_MESSAGE_WITHIN {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} of {consumers} consumers had a message within {FIRST_MESSAGE_WITHIN:?}",
                        serving.load(Ordering::Relaxed)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first_message = start.elapsed();
        tokio::time::sleep(options.warmup).await;
        let (from, at) = (received.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(options.step).await;
        let rate = (received.load(Ordering::Relaxed) - from) as f64 / at.elapsed().as_secs_f64();
        match failed(&first_error) {
            Some(e) => Err(Error::new(ErrorKind::Broker, e)),
            // Nothing arrived in the window: a latency run at the 1 msg/s floor would say
            // only that it confirmed nothing.
            None if rate == 0.0 => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no message arrived in the {:?} measured after the warm-up",
                    options.step
                ),
            )),
            None => Ok(Saturation {
                rate,
                first_message,
            }),
        }
    }
    .await;

    stop.store(true, Ordering::Release);
    // Producers waiting for a credit wake up and see the stop flag.
    credit.close();
    for task in producers.into_iter().chain(consumers) {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    measured
}

/// Measure one point: saturated throughput, then latency at a fraction of it.
async fn point(
    driver: &Arc<dyn Driver>,
    axis: ScalingAxis,
    clients: u32,
    size: usize,
    partitions_allowed: bool,
    max_message_size: Option<usize>,
    options: &ScalingOptions,
) -> ScalingPoint {
    let fitted = fitting(size, max_message_size);
    let mut note = (fitted != size).then(|| {
        format!(
            "{} does not fit {}'s max_message_size of {} bytes with the timestamp header: {} measured instead",
            size_label(size),
            driver.name(),
            max_message_size.unwrap_or_default(),
            size_label(fitted)
        )
    });
    let label = match axis {
        ScalingAxis::Clients => clients.to_string(),
        ScalingAxis::Payload => size_label(size),
    };
    let partitions = if partitions_allowed { clients } else { 1 };
    let mut result = ScalingPoint {
        axis,
        label,
        producers: clients,
        consumers: clients,
        partitions,
        message_size: fitted,
        throughput: 0.0,
        megabytes_per_second: 0.0,
        latency_rate: 0.0,
        e2e_p50: 0.0,
        e2e_p99: 0.0,
        latency_sustained: false,
        note: None,
    };
    let fail = |note: Option<String>, what: String| {
        Some(match note {
            Some(n) => format!("{n}; {what}"),
            None => what,
        })
    };
    let plan = match plan_for(clients, partitions, fitted, 1, options, options.warmup)
        .and_then(|p| driver.check(&p).map(|()| p))
    {
        Ok(plan) => plan,
        Err(e) => {
            result.note = fail(note, format!("not run: {}", e.message()));
            return result;
        }
    };
    eprintln!(
        "  scaling {}: {clients} producer(s) / {clients} consumer(s), {} ...",
        driver.name(),
        size_label(fitted)
    );
    let saturation = match saturate(driver, &plan, options).await {
        Ok(s) => s,
        Err(e) => {
            result.note = fail(note, format!("saturated phase failed: {e}"));
            return result;
        }
    };
    result.throughput = saturation.rate;
    result.megabytes_per_second = saturation.rate * fitted as f64 / 1e6;
    let rate = (saturation.rate * options.load_fraction).max(1.0);
    // The latency run's warm-up covers what every consumer's first message took here (a Kafka
    // group's forming),
    // twice: once for the join, once for the consumers to drain what waited meanwhile (they
    // have at least 1 - load_fraction of their rate to spare).
    let warmup = options.warmup + saturation.first_message * 2;
    let latency = match plan_for(clients, partitions, fitted, rate as u64, options, warmup) {
        Ok(plan) => {
            let run_options = RunOptions {
                stats_interval: options.step * 10,
                print_stats: false,
                progress: false,
                url: driver.name(),
            };
            runner::run(driver.clone(), &plan, &run_options).await
        }
        Err(e) => Err(e),
    };
    match latency {
        Ok(r) => {
            result.latency_rate = r.mailroom.target_rate;
            result.e2e_p50 = r.aggregated_end_to_end_latency_50pct;
            result.e2e_p99 = r.aggregated_end_to_end_latency_99pct;
            result.latency_sustained = r.mailroom.publish_rate_avg >= 0.95 * r.mailroom.target_rate
                && r.mailroom.consume_rate_avg >= 0.95 * r.mailroom.publish_rate_avg;
        }
        Err(e) => note = fail(note, format!("latency run failed: {e}")),
    }
    result.note = note;
    eprintln!(
        "  scaling {}: {} msgs/s ({:.1} MB/s) saturated; e2e p50 {:.3} ms, p99 {:.3} ms at {:.0} msgs/s",
        driver.name(),
        result.throughput.round(),
        result.megabytes_per_second,
        result.e2e_p50,
        result.e2e_p99,
        result.latency_rate
    );
    result
}

/// Sweep one backend: the clients curve, then the payload curve. `partitioned` says whether
/// the backend partitions a topic (then N consumers get N partitions); `max_message_size` is
/// its declared limit. A point that fails carries its error in `note`; the sweep goes on.
pub async fn sweep(
    driver: Arc<dyn Driver>,
    url: &str,
    partitioned: bool,
    max_message_size: Option<usize>,
    options: &ScalingOptions,
) -> ScalingSeries {
    let clock = Instant::now();
    let mut measured: HashMap<(u32, usize), ScalingPoint> = HashMap::new();
    let mut points = Vec::new();
    let wanted = options
        .counts
        .iter()
        .map(|n| (ScalingAxis::Clients, *n, options.clients_message_size))
        .chain(options.sizes.iter().map(|s| (ScalingAxis::Payload, 1, *s)));
    for (axis, clients, size) in wanted {
        // The point both curves share (one client at the clients curve's size) runs once.
        let key = (clients, size);
        let mut p = match measured.get(&key) {
            Some(p) => p.clone(),
            None => {
                let p = point(
                    &driver,
                    axis,
                    clients,
                    size,
                    partitioned,
                    max_message_size,
                    options,
                )
                .await;
                measured.insert(key, p.clone());
                p
            }
        };
        p.axis = axis;
        p.label = match axis {
            ScalingAxis::Clients => clients.to_string(),
            ScalingAxis::Payload => size_label(size),
        };
        points.push(p);
    }
    ScalingSeries {
        backend: driver.name(),
        url: url.to_owned(),
        settings: ScalingSettings {
            step_seconds: options.step.as_secs_f64(),
            warmup_seconds: options.warmup.as_secs_f64(),
            load_fraction: options.load_fraction,
            in_flight_bytes: options.in_flight_bytes,
            clients_message_size: options.clients_message_size,
        },
        points,
        seconds: clock.elapsed().as_secs_f64(),
    }
}

/// One printed line per point: `scaling kafka clients 4: 12345 msgs/s (12.6 MB/s); e2e p99 3.2 ms at 6172 msgs/s`.
pub fn summary_lines(series: &[ScalingSeries]) -> Vec<String> {
    let mut lines = Vec::new();
    for s in series {
        for p in &s.points {
            let axis = match p.axis {
                ScalingAxis::Clients => "clients",
                ScalingAxis::Payload => "payload",
            };
            let figures = if p.measured() {
                format!(
                    "{:.0} msgs/s ({:.2} MB/s); e2e p50 {} ms, p99 {} ms at {:.0} msgs/s",
                    p.throughput,
                    p.megabytes_per_second,
                    crate::summary::ms(p.e2e_p50),
                    crate::summary::ms(p.e2e_p99),
                    p.latency_rate
                )
            } else {
                "not measured".to_owned()
            };
            let note = p
                .note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            lines.push(format!(
                "scaling {} {axis} {}: {figures}{note}",
                s.backend, p.label
            ));
        }
        lines.push(format!("scaling {}: {:.0} s", s.backend, s.seconds));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_over_the_limit_is_replaced_by_the_largest_that_fits() {
        let max = 262_144;
        let fitted = fitting(256 * 1024, Some(max));
        assert!(fitted + HEADER_ALLOWANCE <= max, "{fitted}");
        assert_eq!(fitted % 1024, 0);
        assert_eq!(fitted, 255 * 1024);
        assert_eq!(fitting(16 * 1024, Some(max)), 16 * 1024);
        assert_eq!(fitting(256 * 1024, None), 256 * 1024);
    }

    #[test]
    fn sizes_are_labelled_in_bytes_or_kib() {
        assert_eq!(size_label(100), "100 B");
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(262_144), "256 KiB");
        assert_eq!(size_label(1500), "1500 B");
    }
}
