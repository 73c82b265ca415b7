//! `mailroom compare`: the workloads on each backend, the conformance suite's semantic checks on
//! each, and one report (Markdown + self-contained HTML) under `reports/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{
    Capabilities, Capability, Error, ErrorKind, ExchangeKind, Implementation, Result,
};
use mailroom_testkit::{Conformance, Outcome};

use super::driver::{Driver, MailroomDriver};
use super::overhead::{self, Overhead};
use super::persistence::{self, PersistenceCheck};
use super::raw::baseline_for;
use super::result::scaling::ScalingSeries;
use super::result::{BaselineRatio, TestResult};
use super::routing_cost::{self, RoutingCost};
use super::runner::{self, RunOptions};
use super::scaling::ScalingOptions;
use super::workload::{self, Plan};

/// The brokers `scripts/brokers.sh up` starts: URL scheme, the variable that overrides the
/// URL, the default URL, and the broker's name in the script.
const LOCAL_BROKERS: [(&str, &str, &str, &str); 3] = [
    (
        "amqp",
        "MAILROOM_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "rabbitmq",
    ),
    (
        "kafka",
        "MAILROOM_KAFKA_URL",
        "kafka://127.0.0.1:9092",
        "kafka",
    ),
    (
        "sqs",
        "MAILROOM_SQS_URL",
        "sqs://127.0.0.1:4566?region=us-east-1",
        "sqs",
    ),
];

/// Variants of a local broker that `--local` also measures, each its own entry in the report:
/// URL scheme, the URL option that selects it, and its name in the report ("rabbitmq (stream
/// queues)"). A variant is what a URL option changes on the same broker, when the change is
/// one a team choosing a broker weighs: RabbitMQ's stream queues keep a log that can be
/// replayed (as Kafka's topics do) but lose competing consumers, dead letters and delays.
const LOCAL_VARIANTS: [(&str, &str, &str); 1] = [("amqp", "queue_type=stream", "stream queues")];

/// The URLs `--local` uses: the brokers `scripts/brokers.sh up` starts, for each scheme this
/// build has (memory:// always), each followed by its variants ([`variant_of`]).
/// `MAILROOM_RABBITMQ_URL`, `MAILROOM_KAFKA_URL` and `MAILROOM_SQS_URL` override them, as in the
/// backends' own tests.
pub fn local_urls(schemes: &[&str]) -> Vec<String> {
    let mut urls = vec!["memory://".to_owned()];
    for (scheme, var, default, _) in LOCAL_BROKERS {
        if schemes.contains(&scheme) {
            let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
            let join = if url.contains('?') { '&' } else { '?' };
            let variants: Vec<String> = LOCAL_VARIANTS
                .iter()
                .filter(|(s, _, _)| *s == scheme)
                .map(|(_, option, _)| format!("{url}{join}{option}"))
                .collect();
            urls.push(url);
            urls.extend(variants);
        }
    }
    urls
}

/// The variant `url` selects ("stream queues" for `amqp://…?queue_type=stream`), or `None` for
/// the broker's defaults. A variant is measured for what it changes (conformance, capabilities,
/// the workloads); the raw baseline, peers, scaling sweep, routing cost and broker restarts
/// are measured once per broker, on its defaults.
pub fn variant_of(url: &str) -> Option<&'static str> {
    let (scheme, rest) = url.split_once("://")?;
    let query = rest.split_once('?')?.1;
    LOCAL_VARIANTS
        .into_iter()
        .find(|(s, option, _)| {
            scheme.trim_end_matches('s') == *s && query.split('&').any(|o| o == *option)
        })
        .map(|(_, _, label)| label)
}

/// The broker's name in `scripts/brokers.sh` when `url` is one of its default addresses.
fn local_broker_name(url: &str) -> Option<&'static str> {
    LOCAL_BROKERS
        .into_iter()
        .find(|(_, _, default, _)| *default == url)
        .map(|(_, _, _, broker)| broker)
}

/// The implementation `scripts/brokers.sh` runs behind `url`, when `url` is one of its default
/// addresses (e.g. "Apache Kafka 4.1.1": the Kafka protocol does not tell).
fn local_implementation(url: &str) -> Option<String> {
    mailroom_testkit::local_broker(local_broker_name(url)?)
}

/// What `compare` does.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Backend URLs, in report order.
    pub urls: Vec<String>,
    /// Workload files; empty = the built-in `bench/workloads/`.
    pub workloads: Vec<PathBuf>,
    /// Where the report goes (a fresh folder under `reports/` by default).
    pub out_dir: PathBuf,
    /// Run the conformance suite on each backend.
    pub conformance: bool,
    /// Measure the harness's own overhead.
    pub overhead: bool,
    /// Run each backend's raw-client baseline too, where the build has one.
    pub baselines: bool,
    /// Stop and start each local broker that declares persistence (the testkit's restart
    /// scenario), so the report shows persistence instead of citing the declaration. Only
    /// brokers at `scripts/brokers.sh`'s default addresses are touched.
    pub restart_brokers: bool,
    /// Seconds between periodic stats.
    pub stats_interval: Duration,
    /// The command line, for the report.
    pub command: String,
    /// Sweep producers/consumers and payload sizes on each backend ([`super::scaling`]).
    pub scaling: Option<ScalingOptions>,
    /// Run a peer library's baseline too (`peer+URL`), where the build has one.
    pub peers: bool,
}

/// One conformance case's outcome, flattened for the report.
#[derive(Debug, Clone)]
pub struct CaseLine {
    /// Case name.
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub status: &'static str,
    /// Note, error, or the missing capabilities.
    pub detail: String,
    /// Seconds it took.
    pub seconds: f64,
}

/// One workload on one backend.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// It ran.
    Done(Box<TestResult>),
    /// The backend cannot express the workload (the error names the field).
    NotExpressible {
        /// Workload name.
        workload: String,
        /// Why.
        reason: String,
    },
    /// It failed.
    Failed {
        /// Workload name.
        workload: String,
        /// The error.
        error: String,
    },
}

impl RunOutcome {
    /// The result, if it ran.
    pub fn result(&self) -> Option<&TestResult> {
        match self {
            RunOutcome::Done(r) => Some(r),
            _ => None,
        }
    }
}

/// Everything measured on one backend.
#[derive(Debug, Clone)]
pub struct BackendReport {
    /// The URL, secrets redacted.
    pub url: String,
    /// The backend's name (`memory`, `rabbitmq`, ...), or `?` if it could not be opened.
    pub name: String,
    /// The broker's implementation and version, as the broker reports them.
    pub server_version: String,
    /// Its declared capabilities.
    pub capabilities: Option<Capabilities>,
    /// Conformance cases, when run.
    pub conformance: Vec<CaseLine>,
    /// One per workload.
    pub runs: Vec<RunOutcome>,
    /// Raw-client baseline runs (same workloads), where the build has a baseline.
    pub baseline: Vec<RunOutcome>,
    /// The broker-restart run, when `restart_brokers` asked for it and the broker has a local
    /// restart hook.
    pub persistence: Option<PersistenceCheck>,
    /// What topic-pattern routing cost its subscriber ([`routing_cost`]), measured with the
    /// conformance suite where the backend has topic exchanges.
    pub routing: Option<RoutingCost>,
    /// Why it could not be opened, if it could not.
    pub error: Option<String>,
    /// The broker variant its URL selects ([`variant_of`]: "stream queues"), or `None` for the
    /// broker's defaults.
    pub variant: Option<String>,
}

impl BackendReport {
    /// Its name in the report: the backend's name, and the variant in brackets when the URL
    /// selects one ("rabbitmq (stream queues)"), so two entries of one broker stay apart.
    pub fn label(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{} ({variant})", self.name),
            None => self.name.clone(),
        }
    }

    /// Whether `case` ran and passed.
    pub fn case_passed(&self, case: &str) -> Option<bool> {
        self.conformance
            .iter()
            .find(|c| c.name == case)
            .and_then(|c| match c.status {
                "pass" => Some(true),
                "fail" => Some(false),
                _ => None,
            })
    }
}

/// A whole comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Per backend, in the order given.
    pub backends: Vec<BackendReport>,
    /// The harness's overhead, if measured.
    pub overhead: Option<Overhead>,
    /// The command line.
    pub command: String,
    /// When it started (UTC).
    pub started: String,
    /// How long it took.
    pub elapsed: Duration,
    /// The machine, in a few words.
    pub machine: String,
    /// Scaling curves, one series per backend, when `--scaling` ran.
    pub scaling: Vec<ScalingSeries>,
}

/// Capabilities as (field, value) rows, in declaration order.
pub fn capability_rows(c: &Capabilities) -> Vec<(&'static str, String)> {
    // A supported capability the client implements says so: it costs what the broker's would not.
    let flag = |capability: Capability| match c.implementation(capability) {
        None => "no".to_owned(),
        Some(Implementation::Native) => "yes".to_owned(),
        Some(Implementation::ClientSide) => "yes (client-side)".to_owned(),
    };
    let opt = |v: Option<usize>| v.map_or("-".to_owned(), |v| v.to_string());
    vec![
        ("per_key_ordering", flag(Capability::PerKeyOrdering)),
        ("competing_consumers", flag(Capability::CompetingConsumers)),
        ("replay", flag(Capability::Replay)),
        ("delayed_delivery", flag(Capability::DelayedDelivery)),
        (
            "max_delay",
            c.max_delay.map_or("-".to_owned(), |d| format!("{d:?}")),
        ),
        (
            "exchange_direct",
            flag(Capability::Exchange(ExchangeKind::Direct)),
        ),
        (
            "exchange_topic",
            flag(Capability::Exchange(ExchangeKind::Topic)),
        ),
        (
            "exchange_fanout",
            flag(Capability::Exchange(ExchangeKind::Fanout)),
        ),
        (
            "exchange_headers",
            flag(Capability::Exchange(ExchangeKind::Headers)),
        ),
        ("dead_letter", flag(Capability::DeadLetter)),
        (
            "max_delivery_attempts",
            flag(Capability::MaxDeliveryAttempts),
        ),
        ("attempt_count", flag(Capability::AttemptCount)),
        ("max_queue_length", flag(Capability::MaxQueueLength)),
        ("message_ttl", flag(Capability::MessageTtl)),
        ("batch_send", flag(Capability::BatchSend)),
        ("transactions", flag(Capability::Transactions)),
        ("persistence", flag(Capability::Persistence)),
        ("redelivery_on_drop", flag(Capability::RedeliveryOnDrop)),
        ("partitioned_queues", flag(Capability::PartitionedQueues)),
        (
            "repeated_header_names",
            flag(Capability::RepeatedHeaderNames),
        ),
        ("max_message_size", opt(c.max_message_size)),
        ("max_batch_size", opt(c.max_batch_size)),
        ("max_headers", opt(c.max_headers)),
        ("delivery_guarantees", c.delivery_guarantees.to_string()),
    ]
}

/// Whether a backend declares a capability.
pub fn declares(report: &BackendReport, capability: Capability) -> bool {
    report
        .capabilities
        .as_ref()
        .is_some_and(|c| c.supports(capability))
}

/// Load the chosen workloads (or the built-in ones).
pub fn load_workloads(files: &[PathBuf]) -> Result<Vec<Plan>> {
    if files.is_empty() {
        return workload::builtin_plans();
    }
    files.iter().map(|f| workload::load_plan(f)).collect()
}

async fn run_one(driver: &Arc<dyn Driver>, plan: &Plan, options: &RunOptions) -> RunOutcome {
    let name = plan.workload.name.clone();
    if let Err(e) = driver.check(plan) {
        eprintln!("  {name}: not run on {}: {e}", driver.name());
        return RunOutcome::NotExpressible {
            workload: name,
            reason: e.message().to_owned(),
        };
    }
    eprintln!("  {name} on {} ...", driver.name());
    match runner::run(driver.clone(), plan, options).await {
        Ok(r) => RunOutcome::Done(Box::new(r)),
        Err(e) => {
            eprintln!("  {name} on {} failed: {e}", driver.name());
            RunOutcome::Failed {
                workload: name,
                error: e.to_string(),
            }
        }
    }
}

/// Counted pairs of saturation steps behind each max-rate workload's ratio
/// ([`runner::paired_max_rate`]): closed-loop steps of the backend and its raw baseline in
/// turns (ABBA), so what the machine does meanwhile lands on both; the ratio is the median
/// pair's. Paired *searches* (five rounds of pass/fail steps) gave Apache Kafka 0.661, 0.688
/// and 0.891 in three runs on a quiet machine: a figure bracketed by steps moves by a whole
/// bisection with one stall, where a measured one moves by what the stall took. On a simulated
/// machine whose neighbour takes up to 45 % for seconds at a time, 7 pairs put one run in ten
/// more than 5.9 % off, 12 pairs 3.3 % (15: 3.0 %).
pub const MAX_RATE_PAIRS: usize = 12;

/// Longest the paired saturation may take, in the workload's warm-ups: thirteen pairs (one of
/// them the warm-up) of four 1-second steps and their drains take about a minute; a broker slow
/// to drain (each drain may take a second) or to deliver its first message stays within it.
pub const MAX_RATE_BUDGET_WARMUPS: u32 = 12;

/// Each workload on the backend; for each max-rate one, one run of it on the raw baseline too
/// (its figures and latencies beside the backend's; running every workload on the baseline
/// would double the time) and the paired saturation steps ([`MAX_RATE_PAIRS`]) for the
/// throughput ratio, stored in the backend's result. Returns (runs, baseline runs).
async fn run_with_baseline(
    driver: Arc<dyn Driver>,
    baseline: Option<Result<Arc<dyn Driver>>>,
    plans: &[Plan],
    options: &RunOptions,
) -> (Vec<RunOutcome>, Vec<RunOutcome>) {
    let (mut runs, mut raw_runs) = (Vec::new(), Vec::new());
    for plan in plans {
        let mut outcome = run_one(&driver, plan, options).await;
        if plan.rate.is_none() {
            match &baseline {
                Some(Ok(raw)) => {
                    let raw_options = RunOptions {
                        url: raw.name(),
                        ..options.clone()
                    };
                    let raw_outcome = run_one(raw, plan, &raw_options).await;
                    if let (RunOutcome::Done(r), Some(rr)) = (&mut outcome, raw_outcome.result()) {
                        let mut ratio = BaselineRatio::of(r, rr);
                        eprintln!(
                            "  paired saturation: {} and {}, {MAX_RATE_PAIRS} pairs of closed-loop steps ...",
                            driver.name(),
                            raw.name()
                        );
                        match runner::paired_max_rate(
                            driver.clone(),
                            raw.clone(),
                            plan,
                            MAX_RATE_PAIRS,
                            plan.warmup * MAX_RATE_BUDGET_WARMUPS,
                            options.progress,
                        )
                        .await
                        {
                            Ok(paired) => match (paired.rate(), paired.raw_rate()) {
                                (Some(rate), Some(raw_rate)) => {
                                    ratio = ratio.with_paired(rate, raw_rate, paired.ratios);
                                }
                                _ => eprintln!(
                                    "  paired saturation: no pair where both moved messages ({:?} vs {:?}); the ratio is the workload runs'",
                                    paired.a, paired.b
                                ),
                            },
                            Err(e) => eprintln!(
                                "  paired saturation failed ({e}); the ratio is the workload runs'"
                            ),
                        }
                        eprintln!("  {}", ratio.line(&r.driver, &r.workload));
                        r.mailroom.baseline = Some(ratio);
                    }
                    raw_runs.push(raw_outcome);
                }
                Some(Err(e)) => raw_runs.push(RunOutcome::Failed {
                    workload: plan.workload.name.clone(),
                    error: format!("the raw baseline could not be opened: {e}"),
                }),
                None => {}
            }
        }
        runs.push(outcome);
    }
    (runs, raw_runs)
}

/// Run the comparison. Backends that cannot be opened are reported (and make the caller exit
/// non-zero), the others still run.
pub async fn compare(options: &CompareOptions) -> Result<Comparison> {
    let plans = load_workloads(&options.workloads)?;
    let started = utc_now();
    let clock = Instant::now();
    let mut backends = Vec::new();
    let mut scaling = Vec::new();
    for url in &options.urls {
        let shown = mailroom_core::url::redact(url);
        let variant = variant_of(url);
        eprintln!("== {shown}");
        let backend = match mailroom::connect(url).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("  cannot open {shown}: {e}");
                backends.push(BackendReport {
                    url: shown.to_string(),
                    name: "?".into(),
                    server_version: "unreachable".into(),
                    capabilities: None,
                    conformance: Vec::new(),
                    runs: Vec::new(),
                    baseline: Vec::new(),
                    persistence: None,
                    routing: None,
                    error: Some(e.to_string()),
                    variant: variant.map(str::to_owned),
                });
                continue;
            }
        };
        let name = backend.name().to_owned();
        let reported = backend
            .server_version()
            .await
            .unwrap_or_else(|e| format!("version unknown: {e}"));
        let implementation = local_implementation(url);
        // Named only where the broker does not already say it (RabbitMQ does).
        let server_version = match &implementation {
            Some(implementation) if !reported.contains(implementation.as_str()) => {
                format!("{implementation}; {reported}")
            }
            _ => reported,
        };
        eprintln!("  {name}: {server_version}");
        let capabilities = backend.capabilities().clone();
        let run_options = RunOptions {
            stats_interval: options.stats_interval,
            print_stats: true,
            progress: true,
            url: shown.to_string(),
        };
        let driver: Arc<dyn Driver> = Arc::new(MailroomDriver::new(backend.clone()));
        // A variant's raw baseline would be its broker's again (the raw clients use the
        // defaults): measured once, on the defaults' entry.
        let raw =
            if options.baselines && variant.is_none() && plans.iter().any(|p| p.rate.is_none()) {
                baseline_for(url).await.transpose()
            } else {
                None
            };
        let (mut runs, mut baseline) = run_with_baseline(driver, raw, &plans, &run_options).await;
        if let Some(variant) = variant {
            // Its results carry the variant's name, so its rows and files stay apart from the
            // defaults' ones.
            for outcome in &mut runs {
                if let RunOutcome::Done(r) = outcome {
                    r.driver = format!("{} ({variant})", r.driver);
                }
            }
        }
        if options.peers && variant.is_none() {
            super::peers::run_peers(url, &plans, &run_options, &mut runs, &mut baseline).await;
        }
        if let (Some(sweep), None) = (&options.scaling, variant) {
            scaling.push(
                super::scaling::sweep(
                    Arc::new(MailroomDriver::new(backend.clone())),
                    &shown.to_string(),
                    capabilities.partitioned_queues,
                    capabilities.max_message_size,
                    sweep,
                )
                .await,
            );
        }
        // The exchange routes alike whatever the queue type: measured on the defaults' entry.
        let routing = if options.conformance && variant.is_none() {
            eprintln!("  routing cost on {name} (a topic-pattern subscriber taking 1 in 10) ...");
            let cost = routing_cost::measure(&backend).await;
            if let Some(cost) = &cost {
                eprintln!(
                    "  routing {name}: {} msgs/s delivered (median of {} rounds){}",
                    cost.median().map_or("-".to_owned(), |m| format!("{m:.0}")),
                    cost.rounds.len(),
                    cost.error
                        .as_deref()
                        .map(|e| format!("; stopped: {e}"))
                        .unwrap_or_default()
                );
            }
            cost
        } else {
            None
        };
        let _ = backend.close().await;
        let conformance = if options.conformance {
            eprintln!("  conformance suite on {name} ...");
            let target = url.clone();
            let report = Conformance::new(move || {
                let target = target.clone();
                async move { mailroom::connect(&target).await }
            })
            .case_timeout(Duration::from_secs(60))
            .run()
            .await;
            eprintln!(
                "  conformance {name}: {} passed, {} failed, {} skipped",
                report.passed().count(),
                report.failed().count(),
                report.skipped().count()
            );
            report
                .results
                .iter()
                .map(|r| {
                    let (status, detail) = match &r.outcome {
                        Outcome::Passed { note } => ("pass", note.clone()),
                        Outcome::Failed { error } => ("fail", error.clone()),
                        Outcome::Skipped { missing } => (
                            "skip",
                            format!(
                                "declares no {}",
                                missing
                                    .iter()
                                    .map(|c| c.name())
                                    .collect::<Vec<_>>()
                                    .join(", no ")
                            ),
                        ),
                    };
                    CaseLine {
                        name: r.name.to_owned(),
                        status,
                        detail,
                        seconds: r.elapsed.as_secs_f64(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let persistence = match local_broker_name(url) {
            Some(broker) if options.restart_brokers && capabilities.persistence => {
                eprintln!("  broker-restart scenario on {name} (the broker is stopped twice) ...");
                let check = persistence::check(url, broker).await;
                if let Some(check) = &check {
                    eprintln!("  restarts on {name}: {}", check.summary());
                }
                check
            }
            _ => None,
        };
        backends.push(BackendReport {
            url: shown.to_string(),
            name,
            server_version,
            capabilities: Some(capabilities),
            conformance,
            runs,
            baseline,
            persistence,
            routing,
            error: None,
            variant: variant.map(str::to_owned),
        });
    }
    let overhead = if options.overhead {
        eprintln!("== harness overhead (raw mpsc through the harness vs a bare loop)");
        Some(overhead::measure(Duration::from_secs(1), 3, 100).await?)
    } else {
        None
    };
    Ok(Comparison {
        backends,
        overhead,
        command: options.command.clone(),
        started,
        elapsed: clock.elapsed(),
        machine: machine(),
        scaling,
    })
}

/// Write the report files; returns the Markdown and HTML paths.
pub fn write(comparison: &Comparison, dir: &std::path::Path) -> Result<(PathBuf, PathBuf)> {
    let io = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorKind::Config,
            format!("cannot write {what} under {}: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(dir.join("results")).map_err(|e| io("the report folder", e))?;
    for backend in &comparison.backends {
        for (i, outcome) in backend.runs.iter().chain(&backend.baseline).enumerate() {
            if let RunOutcome::Done(r) = outcome {
                // One peer library runs beside several backends: its files name the backend.
                let driver = if r.driver.starts_with("peer-") {
                    format!("{}-{}", backend.name, r.driver)
                } else if backend.variant.is_some() {
                    // "rabbitmq (stream queues)" → "rabbitmq-stream-queues".
                    slug(&r.driver)
                } else {
                    r.driver.clone()
                };
                let file = dir.join("results").join(format!(
                    "{driver}-{:02}-{}.json",
                    i,
                    slug(&r.workload)
                ));
                let json = serde_json::to_string_pretty(r)
                    .map_err(|e| Error::config(format!("result JSON: {e}")))?;
                std::fs::write(&file, json).map_err(|e| io("a result", e))?;
            }
        }
    }
    if !comparison.scaling.is_empty() {
        let json = serde_json::to_string_pretty(&comparison.scaling)
            .map_err(|e| Error::config(format!("scaling JSON: {e}")))?;
        std::fs::write(dir.join("results").join(SCALING_JSON), json)
            .map_err(|e| io("scaling.json", e))?;
    }
    let charts = super::report::charts(comparison);
    for (name, svg) in &charts {
        std::fs::write(dir.join(format!("{name}.svg")), svg).map_err(|e| io("a chart", e))?;
    }
    let md = dir.join("report.md");
    let html = dir.join("report.html");
    std::fs::write(&md, super::report::markdown(comparison, &charts))
        .map_err(|e| io("report.md", e))?;
    std::fs::write(&html, super::report::html(comparison, &charts))
        .map_err(|e| io("report.html", e))?;
    Ok((md, html))
}

/// The scaling curves' file under a report's `results/`: a JSON array of
/// [`ScalingSeries`], everything the report's scaling section is drawn from.
pub const SCALING_JSON: &str = "scaling.json";

/// Read the scaling curves a report wrote (`results/scaling.json` under `dir`), to draw them
/// again; none when the run had no `--scaling`.
pub fn read_scaling(dir: &std::path::Path) -> Result<Vec<ScalingSeries>> {
    let path = dir.join("results").join(SCALING_JSON);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::config(format!("{} is not scaling JSON: {e}", path.display())))
}

/// A file-name-safe form of a workload name.
pub fn slug(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_owned()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpus} CPU(s), {model}, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Now, as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A default report folder: `reports/compare-YYYYMMDD-HHMMSS`.
pub fn default_out_dir() -> PathBuf {
    let stamp: String = utc_now().chars().filter(|c| c.is_ascii_digit()).collect();
    let (date, time) = stamp.split_at(8.min(stamp.len()));
    PathBuf::from("reports").join(format!("compare-{date}-{time}"))
}
