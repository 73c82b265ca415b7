//! Runs one workload on one driver, open loop.
//!
//! Each producer sends on a schedule: message `i` is *intended* at `start + i / rate`, and it is
//! sent then, or at once if the producer is late, never skipped. Publish delay (actual −
//! intended send) shows a producer that could not keep up; publish latency is confirm − actual
//! send; end-to-end latency is receive − intended send, from the monotonic microsecond clock
//! carried in a header, so a stalled producer or broker cannot hide latency (no coordinated
//! omission). The warm-up is run and thrown away; periodic stats are kept every
//! `stats_interval`, with a live progress line on a terminal.

mod consume;
mod produce;
mod progress;
mod recorder;
mod saturate;
mod search;
mod state;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use mailroom_core::{Error, ErrorKind, Result};

use self::consume::consume;
use self::produce::produce;
use self::progress::{Period, Progress};
pub use self::saturate::Paired;
use self::search::Search;
use self::state::{histogram, RunState};
use crate::driver::{now_us, Driver, TopicPlan};
use crate::result::{MaxRate, Percentiles, TestResult};
use crate::workload::Plan;

/// How a run reports while it goes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Seconds between periodic stats (OMB: 10 s).
    pub stats_interval: Duration,
    /// Print periodic stats lines to stderr.
    pub print_stats: bool,
    /// Show a live progress line on stderr when it is a terminal.
    pub progress: bool,
    /// The URL (redacted) to put in the result.
    pub url: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            stats_interval: Duration::from_secs(10),
            print_stats: true,
            progress: true,
            url: String::new(),
        }
    }
}

/// Highest value a histogram records: an hour, in microseconds.
const HIST_MAX_US: u64 = 3_600_000_000;
/// Longest the consumers get to drain what is in flight once producers stop.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Longest a producer or consumer gets to stop (flush, close) once the run is over.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most confirms one producer awaits at once before it stops sending (a bound, not a window).
const MAX_CONFIRMS_IN_FLIGHT: usize = 65_536;
/// The max-rate search's lowest step is `producerStartRate` divided by this.
pub const SEARCH_FLOOR_DIVISOR: f64 = 100.0;
/// Backlog samples for the drain chart.
const BACKLOG_SAMPLE: Duration = Duration::from_millis(250);

fn fresh_name(what: &str) -> String {
    let id = mailroom_core::MessageId::generate().to_string();
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    format!("mr-bench-{what}-{id}")
}

/// Fresh topics (and their subscriptions) for one run of `plan`.
fn topics_for(plan: &Plan) -> Vec<TopicPlan> {
    let run_id = fresh_name("t");
    (0..plan.topics)
        .map(|t| {
            let name = format!("{run_id}-{t}");
            TopicPlan {
                subscriptions: (0..plan.subscriptions)
                    .map(|s| format!("{name}-sub{s}"))
                    .collect(),
                name,
                partitions: plan.partitions,
            }
        })
        .collect()
}

async fn delete_topics(driver: &Arc<dyn Driver>, topics: &[TopicPlan]) {
    for topic in topics {
        if let Err(e) = driver.delete(topic).await {
            tracing::warn!("bench: cannot delete {}: {e}", topic.name);
        }
    }
}

/// Create `topics` on `driver`; on a failure, those already created are deleted again.
async fn create_topics(driver: &Arc<dyn Driver>, topics: &[TopicPlan]) -> Result<()> {
    for (i, topic) in topics.iter().enumerate() {
        if let Err(e) = driver.create(topic).await {
            delete_topics(driver, &topics[..i]).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Run a planned workload on a driver and return its result.
pub async fn run(driver: Arc<dyn Driver>, plan: &Plan, options: &RunOptions) -> Result<TestResult> {
    driver.check(plan)?;
    let plan = Arc::new(plan.clone());
    let topics = topics_for(&plan);
    create_topics(&driver, &topics).await?;
    let outcome = run_on(driver.clone(), plan.clone(), &topics, options).await;
    delete_topics(&driver, &topics).await;
    outcome
}

/// The max-rate ratio of `plan` (a max-rate workload) on a backend and its raw baseline, both
/// runs live at once, each on its own topics: `pairs` pairs of closed-loop saturation steps
/// taken in turn (see [`saturate`](self::saturate)), within `budget`. Only the ratio and the
/// figures behind it come out: the workload's own runs measure latency.
pub async fn paired_max_rate(
    backend: Arc<dyn Driver>,
    raw: Arc<dyn Driver>,
    plan: &Plan,
    pairs: usize,
    budget: Duration,
    show_progress: bool,
) -> Result<Paired> {
    backend.check(plan)?;
    raw.check(plan)?;
    let plan = Arc::new(plan.clone());
    let (topics_a, topics_b) = (topics_for(&plan), topics_for(&plan));
    create_topics(&backend, &topics_a).await?;
    if let Err(e) = create_topics(&raw, &topics_b).await {
        delete_topics(&backend, &topics_a).await;
        return Err(e);
    }
    let outcome = paired_on(
        [(backend.clone(), &topics_a), (raw.clone(), &topics_b)],
        plan,
        pairs,
        budget,
        show_progress,
    )
    .await;
    delete_topics(&backend, &topics_a).await;
    delete_topics(&raw, &topics_b).await;
    outcome
}

/// A run's producer and consumer tasks.
struct Tasks {
    producers: Vec<JoinHandle<Result<()>>>,
    consumers: Vec<JoinHandle<Result<()>>>,
}

impl Tasks {
    /// Consumers first, so every subscription is live before the first send.
    fn spawn(
        driver: &Arc<dyn Driver>,
        plan: &Arc<Plan>,
        topics: &[TopicPlan],
        state: &Arc<RunState>,
    ) -> Tasks {
        let mut consumers: Vec<JoinHandle<Result<()>>> = Vec::new();
        for topic in topics {
            for sub in &topic.subscriptions {
                for _ in 0..plan.consumers {
                    let consumer =
                        consume(driver.clone(), topic.clone(), sub.clone(), state.clone());
                    consumers.push(tokio::spawn(consumer));
                }
            }
        }
        let mut producers: Vec<JoinHandle<Result<()>>> = Vec::new();
        for topic in topics {
            for p in 0..plan.producers {
                let producer = produce(
                    driver.clone(),
                    topic.clone(),
                    plan.clone(),
                    p as usize,
                    state.clone(),
                );
                producers.push(tokio::spawn(producer));
            }
        }
        Tasks {
            producers,
            consumers,
        }
    }

    /// Whether a task has stopped (before it was asked to: the run has failed).
    fn failed(&self) -> bool {
        self.producers
            .iter()
            .chain(&self.consumers)
            .any(|t| t.is_finished())
    }

    /// Stop: producers first (they flush), then let the consumers take what is in flight.
    /// Returns the first task's failure.
    async fn stop(self, state: &RunState, subs: i64) -> Option<Error> {
        state.stop_producers.store(true, Ordering::Release);
        state.consumers_paused.store(false, Ordering::Release);
        let mut first_failure: Option<Error> = None;
        for p in self.producers {
            if let Err(e) = join_within(p, "producer").await {
                first_failure.get_or_insert(e);
            }
        }
        let grace = Instant::now();
        let consumers_failed = |c: &[JoinHandle<Result<()>>]| c.iter().any(|t| t.is_finished());
        while backlog_of(state, subs) > 0
            && grace.elapsed() < DRAIN_GRACE
            && !consumers_failed(&self.consumers)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        state.stop_consumers.store(true, Ordering::Release);
        for c in self.consumers {
            if let Err(e) = join_within(c, "consumer").await {
                first_failure.get_or_insert(e);
            }
        }
        first_failure
    }
}

/// Messages sent and not yet received, over all subscriptions. A receive can be counted
/// before its send's confirm is: never negative.
fn backlog_of(state: &RunState, subs: i64) -> i64 {
    (state.sent_total.load(Ordering::Relaxed) as i64 * subs
        - state.received_total.load(Ordering::Relaxed) as i64)
        .max(0)
}

async fn paired_on(
    sides: [(Arc<dyn Driver>, &Vec<TopicPlan>); 2],
    plan: Arc<Plan>,
    pairs: usize,
    budget: Duration,
    show_progress: bool,
) -> Result<Paired> {
    let producers_total = (plan.topics * plan.producers) as f64;
    let subs = plan.subscriptions as i64;
    let initial = plan.start_rate as f64;
    let [(driver_a, topics_a), (driver_b, topics_b)] = sides;
    let (state_a, state_b) = (Arc::new(RunState::new()?), Arc::new(RunState::new()?));
    // Both sides trickle at the search's floor until it starts: neither floods the machine
    // while the other's consumers are still joining.
    let floor = (initial / SEARCH_FLOOR_DIVISOR).max(1.0);
    state_a.set_rate(floor / producers_total);
    state_b.set_rate(floor / producers_total);
    let tasks_a = Tasks::spawn(&driver_a, &plan, topics_a, &state_a);
    let tasks_b = Tasks::spawn(&driver_b, &plan, topics_b, &state_b);
    let progress = Progress::new(
        show_progress,
        format!(
            "{} on {} and {}",
            plan.workload.name,
            driver_a.name(),
            driver_b.name()
        ),
    );
    let start = Instant::now();
    let until = start + budget;
    let search = |state| Search {
        state,
        plan: &plan,
        producers_total,
        subs,
        until,
        progress: &progress,
    };
    let (search_a, search_b) = (search(&state_a), search(&state_b));
    let paired = saturate::run_saturation(
        [&search_a, &search_b],
        floor,
        pairs,
        start,
        [&|| tasks_a.failed(), &|| tasks_b.failed()],
    )
    .await;
    progress.clear();
    let failed = tasks_a.failed() || tasks_b.failed();
    let stop_a = tasks_a.stop(&state_a, subs).await;
    let stop_b = tasks_b.stop(&state_b, subs).await;
    if let Some(e) = stop_a.or(stop_b) {
        return Err(e);
    }
    if failed {
        return Err(Error::new(
            ErrorKind::Broker,
            format!(
                "workload {}: a producer or consumer of {} or {} stopped during the paired saturation steps",
                plan.source,
                driver_a.name(),
                driver_b.name()
            ),
        ));
    }
    Ok(paired)
}

fn task_error(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Broker, format!("bench task failed: {e}"))
}

/// Wait for a producer or consumer task to stop; one stuck in the broker (a send waiting for
/// window room that confirms never free, a close that never returns) is aborted after
/// `STOP_TIMEOUT` and reported, so a broken broker cannot hang the whole comparison.
async fn join_within(task: JoinHandle<Result<()>>, what: &str) -> Result<()> {
    let abort = task.abort_handle();
    match tokio::time::timeout(STOP_TIMEOUT, task).await {
        Ok(joined) => joined.map_err(task_error).and_then(|r| r),
        Err(_) => {
            abort.abort();
            Err(Error::new(
                ErrorKind::Timeout,
                format!("a {what} did not stop within {STOP_TIMEOUT:?} after the run; aborted"),
            ))
        }
    }
}

async fn run_on(
    driver: Arc<dyn Driver>,
    plan: Arc<Plan>,
    topics: &[TopicPlan],
    options: &RunOptions,
) -> Result<TestResult> {
    let state = Arc::new(RunState::new()?);
    let producers_total = (plan.topics * plan.producers) as f64;
    let subs = plan.subscriptions as i64;
    let initial = plan.rate.unwrap_or(plan.start_rate) as f64;
    state.set_rate(initial / producers_total);
    let backlog_run = plan.backlog_bytes > 0;
    state.consumers_paused.store(backlog_run, Ordering::Release);

    let tasks = Tasks::spawn(&driver, &plan, topics, &state);
    let (producers, consumers) = (&tasks.producers, &tasks.consumers);

    let start = Instant::now();
    let mut result = TestResult {
        workload: plan.workload.name.clone(),
        driver: driver.name(),
        message_size: plan.message_size() as u64,
        topics: plan.topics,
        partitions: plan.partitions,
        producers_per_topic: plan.producers,
        consumers_per_topic: plan.consumers * plan.subscriptions,
        ..TestResult::default()
    };
    result.mailroom.workload_file = plan.source.clone();
    result.mailroom.url = options.url.clone();
    result.mailroom.server_version = driver.server_version().await;
    result.mailroom.stats_interval_seconds = options.stats_interval.as_secs_f64();
    result.mailroom.subscriptions = plan.subscriptions;
    let progress = Progress::new(
        options.progress,
        format!("{} on {}", plan.workload.name, driver.name()),
    );
    let backlog = |state: &RunState| backlog_of(state, subs);
    let failed = |tasks: &[JoinHandle<Result<()>>]| tasks.iter().any(|t| t.is_finished());

    let outcome: Result<()> = async {
        // Phase 1: warm-up, or the max-rate search, or building the backlog.
        if backlog_run {
            let size = plan.message_size().max(1) as u64;
            let target = (plan.backlog_bytes / size).max(1) as i64;
            let limit = plan.duration.max(Duration::from_secs(60)) * 4;
            let mut last_sample = Instant::now();
            while backlog(&state) < target {
                if start.elapsed() > limit || failed(producers) {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "workload {}: the backlog of {target} messages (consumerBacklogSizeGB) was not built within {limit:?}; {} confirmed",
                            plan.source,
                            state.sent_total.load(Ordering::Relaxed)
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                if last_sample.elapsed() >= BACKLOG_SAMPLE {
                    last_sample = Instant::now();
                    let b = backlog(&state);
                    result.mailroom.backlog_series.push((start.elapsed().as_secs_f64(), b));
                    progress.show(&format!("building backlog {b}/{target}"));
                }
            }
        } else if plan.rate.is_none() {
            let until = start + plan.warmup.max(search::CLIMB_STEP * 4);
            let search = Search {
                state: &state,
                plan: &plan,
                producers_total,
                subs,
                until,
                progress: &progress,
            };
            let outcome = search
                .run(initial, &mut result.mailroom.rate_search, start, || {
                    failed(producers) || failed(consumers)
                })
                .await;
            let hold = match &outcome {
                MaxRate::Found { rate } => *rate,
                MaxRate::NotFound { lowest_step, .. } => *lowest_step,
            };
            state.set_rate(hold / producers_total);
            result.mailroom.max_rate = Some(outcome);
        } else {
            let mut last_sample = Instant::now();
            while start.elapsed() < plan.warmup {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if last_sample.elapsed() >= Duration::from_secs(1) {
                    last_sample = Instant::now();
                    progress.show(&format!(
                        "warm-up {:.0}/{:.0}s",
                        start.elapsed().as_secs_f64(),
                        plan.warmup.as_secs_f64()
                    ));
                }
            }
        }
        result.mailroom.target_rate = state.rate() * producers_total;

        // Phase 2: the measured run. Everything recorded so far is the warm-up's: dropped.
        let _ = (state.publish.take(), state.delay.take(), state.e2e.take());
        state.send_errors.store(0, Ordering::Relaxed);
        let measure_start = Instant::now();
        let drain_start_us = now_us();
        // On one in-order partition the drain is over when the first message sent after it
        // began arrives, whatever the broker keeps in flight at this rate (a broker that
        // batches can hold more messages than the count threshold below allows).
        let drain_ends_in_order = driver.delivers_in_order() && plan.partitions == 1;
        if backlog_run {
            let b = backlog(&state);
            result.mailroom.drain_from = Some(b);
            result.mailroom.backlog_series.push((start.elapsed().as_secs_f64(), b));
            state.consumers_paused.store(false, Ordering::Release);
        }
        let mut agg = (histogram()?, histogram()?, histogram()?);
        // Each period counts from the totals at its start: the tasks bump one counter each
        // per message, not a total and a period count.
        let mut period = Period {
            at: measure_start,
            sent_total: state.sent_total.load(Ordering::Relaxed),
            received_total: state.received_total.load(Ordering::Relaxed),
        };
        let (mut sent_all, mut received_all, mut errors_all) = (0u64, 0u64, 0u64);
        let mut last_sample = Instant::now();
        let mut last_progress = Instant::now();
        let drained_below = |rate: f64| ((rate * 0.1) as i64).max(10);
        loop {
            let tick = if backlog_run && result.mailroom.drain_seconds.is_none() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(50)
            };
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            let elapsed = now - measure_start;
            let b = backlog(&state);
            // A drain can take a fraction of a sample period: sample every tick while it runs.
            let draining = backlog_run && result.mailroom.drain_seconds.is_none();
            if draining || now - last_sample >= BACKLOG_SAMPLE {
                last_sample = now;
                result.mailroom.backlog_series.push((start.elapsed().as_secs_f64(), b));
            }
            let caught_up = drain_ends_in_order
                && state.newest_received_intended_us.load(Ordering::Relaxed) >= drain_start_us;
            if draining && (caught_up || b <= drained_below(result.mailroom.target_rate)) {
                result.mailroom.drain_seconds = Some(elapsed.as_secs_f64());
            }
            let done = if backlog_run {
                result.mailroom.drain_seconds.is_some() || elapsed >= plan.duration
            } else {
                elapsed >= plan.duration
            };
            if now - period.at >= options.stats_interval || done {
                let secs = (now - period.at).as_secs_f64().max(1e-9);
                let sent_total = state.sent_total.load(Ordering::Relaxed);
                let received_total = state.received_total.load(Ordering::Relaxed);
                let sent = sent_total - period.sent_total;
                let received = received_total - period.received_total;
                let errors = state.send_errors.swap(0, Ordering::Relaxed);
                sent_all += sent;
                received_all += received;
                errors_all += errors;
                let (p, d, e) = (state.publish.take(), state.delay.take(), state.e2e.take());
                let _ = agg.0.add(&p);
                let _ = agg.1.add(&d);
                let _ = agg.2.add(&e);
                result.push_period(
                    sent as f64 / secs,
                    errors as f64 / secs,
                    received as f64 / secs,
                    b,
                    &p,
                    &d,
                    &e,
                );
                if options.print_stats {
                    let pe = Percentiles::of(&e, 1000.0);
                    let pp = Percentiles::of(&p, 1000.0);
                    progress.clear();
                    eprintln!(
                        "  [{}] pub {:>9.0} msg/s  cons {:>9.0} msg/s  err {:>5.0}/s  backlog {:>8}  pub lat ms p50 {:.3} p99 {:.3} max {:.3}  e2e ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}  delay p99 {} us",
                        driver.name(),
                        sent as f64 / secs,
                        received as f64 / secs,
                        errors as f64 / secs,
                        b,
                        pp.p50,
                        pp.p99,
                        pp.max,
                        pe.p50,
                        pe.p99,
                        pe.p999,
                        pe.max,
                        d.value_at_quantile(0.99)
                    );
                }
                period = Period {
                    at: now,
                    sent_total,
                    received_total,
                };
            } else if now - last_progress >= Duration::from_secs(1) {
                last_progress = now;
                let secs = (now - period.at).as_secs_f64().max(1e-9);
                let sent = state.sent_total.load(Ordering::Relaxed) - period.sent_total;
                let received = state.received_total.load(Ordering::Relaxed) - period.received_total;
                progress.show(&format!(
                    "{:.0}/{:.0}s  pub {:.0} msg/s  cons {:.0} msg/s  backlog {b}",
                    elapsed.as_secs_f64(),
                    plan.duration.as_secs_f64(),
                    sent as f64 / secs,
                    received as f64 / secs,
                ));
            }
            if done {
                break;
            }
            if failed(producers) || failed(consumers) {
                break;
            }
        }
        progress.clear();
        let measured = measure_start.elapsed().as_secs_f64();
        result.mailroom.measured_seconds = measured;
        result.mailroom.messages_sent = sent_all;
        result.mailroom.messages_received = received_all;
        result.mailroom.send_errors = errors_all;
        result.mailroom.publish_rate_avg = sent_all as f64 / measured;
        result.mailroom.consume_rate_avg = received_all as f64 / measured;
        result.set_aggregates(&agg.0, &agg.1, &agg.2);
        Ok(())
    }
    .await;

    let first_failure = tasks.stop(&state, subs).await;
    outcome?;
    result.mailroom.first_error = state.first_error.lock().ok().and_then(|e| e.clone());
    if let Some(e) = first_failure {
        return Err(e);
    }
    if result.mailroom.messages_sent == 0 {
        return Err(Error::new(
            ErrorKind::Broker,
            format!(
                "workload {} on {}: no message was confirmed{}",
                plan.source,
                driver.name(),
                result
                    .mailroom
                    .first_error
                    .as_deref()
                    .map(|e| format!(" (first error: {e})"))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(result)
}
