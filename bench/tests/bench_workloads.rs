//! The workload harness on memory:// and on the raw mpsc baseline, and bad input tried as a new
//! user would: each error names the workload file and the field. No speed is asserted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mailroom::ErrorKind;
use mailroom_bench::driver::{
    Driver, DriverConsumer, DriverProducer, Incoming, MailroomDriver, RawMpscDriver, TopicPlan,
};
use mailroom_bench::result::MaxRate;
use mailroom_bench::runner::{self, RunOptions};
use mailroom_bench::workload::{self, Workload};

const SHORT: &str = "name: short\ntopics: 1\npartitionsPerTopic: 1\nmessageSize: 100\n\
subscriptionsPerTopic: 1\nconsumerPerSubscription: 1\nproducersPerTopic: 1\nproducerRate: 500\n\
consumerBacklogSizeGB: 0\ntestDurationSeconds: 1\nwarmupDurationSeconds: 0.2\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mailroom-bench-test-{}",
        mailroom::MessageId::generate()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn quiet() -> RunOptions {
    RunOptions {
        print_stats: false,
        progress: false,
        stats_interval: std::time::Duration::from_millis(500),
        url: "memory://".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_run_moves_every_message_and_fills_omb_fields() {
    let plan = Workload::from_yaml(SHORT, "short.yaml")
        .unwrap()
        .plan("short.yaml", None)
        .unwrap();
    let backend = mailroom::connect("memory://").await.unwrap();
    let r = runner::run(Arc::new(MailroomDriver::new(backend)), &plan, &quiet())
        .await
        .unwrap();
    assert!(r.mailroom.messages_sent > 0);
    assert!(r.mailroom.messages_received > 0);
    assert_eq!(r.mailroom.send_errors, 0);
    assert!(!r.publish_rate.is_empty());
    assert!(r.aggregated_end_to_end_latency_50pct <= r.aggregated_end_to_end_latency_99pct);
    assert!(r.aggregated_end_to_end_latency_99pct <= r.aggregated_end_to_end_latency_max);
    let json = serde_json::to_value(&r).unwrap();
    for field in [
        "publishRate",
        "consumeRate",
        "backlog",
        "publishLatency99pct",
        "publishDelayLatency99pct",
        "endToEndLatency999pct",
        "aggregatedEndToEndLatency9999pct",
        "aggregatedPublishLatencyQuantiles",
    ] {
        assert!(json.get(field).is_some(), "OMB field {field} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_search_and_backlog_drain_on_raw_mpsc_and_memory() {
    let search = SHORT.replace(
        "producerRate: 500",
        "producerRate: 0\nproducerStartRate: 1000",
    );
    let plan = Workload::from_yaml(&search, "search.yaml")
        .unwrap()
        .plan("search.yaml", None)
        .unwrap();
    let r = runner::run(Arc::new(RawMpscDriver::new()), &plan, &quiet())
        .await
        .unwrap();
    assert!(!r.mailroom.rate_search.is_empty());
    assert!(r.mailroom.target_rate > 0.0);
    assert_eq!(
        r.mailroom.max_rate,
        Some(MaxRate::Found {
            rate: r.mailroom.target_rate
        })
    );

    let drain = SHORT
        .replace("consumerBacklogSizeGB: 0", "consumerBacklogSizeGB: 0.0001")
        .replace("warmupDurationSeconds: 0.2", "warmupDurationSeconds: 0")
        .replace("testDurationSeconds: 1", "testDurationSeconds: 20");
    let plan = Workload::from_yaml(&drain, "drain.yaml")
        .unwrap()
        .plan("drain.yaml", None)
        .unwrap();
    let backend = mailroom::connect("memory://").await.unwrap();
    let r = runner::run(Arc::new(MailroomDriver::new(backend)), &plan, &quiet())
        .await
        .unwrap();
    assert!(
        r.mailroom.drain_from.unwrap() >= 1000,
        "{:?}",
        r.mailroom.drain_from
    );
    assert!(r.mailroom.drain_seconds.is_some());
}

#[test]
fn shipped_workloads_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            workload::load_plan(&path).unwrap();
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn the_scaling_set_covers_both_curves() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/scaling");
    let mut points = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let plan = workload::load_plan(&path).unwrap();
            assert!(plan.rate.is_none(), "{}: a max-rate search", plan.source);
            assert_eq!(plan.producers, plan.consumers, "{}", plan.source);
            points.push((plan.producers, plan.message_size()));
        }
    }
    points.sort_unstable();
    assert_eq!(
        points,
        [
            (1, 100),
            (1, 1024),
            (1, 16 * 1024),
            (1, 256 * 1024),
            (2, 1024),
            (4, 1024),
            (8, 1024)
        ]
    );
}

#[test]
fn unknown_field_names_file_and_field() {
    let dir = tmp();
    let path = write(
        &dir,
        "typo.yaml",
        &SHORT.replace("producerRate", "producerRat"),
    );
    let e = workload::load_plan(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let text = e.to_string();
    assert!(
        text.contains("typo.yaml") && text.contains("producerRat"),
        "{text}"
    );
}

#[test]
fn negative_rate_names_file_and_field() {
    let dir = tmp();
    let path = write(
        &dir,
        "neg.yaml",
        &SHORT.replace("producerRate: 500", "producerRate: -100"),
    );
    let text = workload::load_plan(&path).unwrap_err().to_string();
    assert!(
        text.contains("neg.yaml") && text.contains("producerRate"),
        "{text}"
    );
}

#[test]
fn zero_topics_and_missing_duration_name_the_field() {
    let dir = tmp();
    let path = write(&dir, "zero.yaml", &SHORT.replace("topics: 1", "topics: 0"));
    let text = workload::load_plan(&path).unwrap_err().to_string();
    assert!(
        text.contains("zero.yaml") && text.contains("`topics`"),
        "{text}"
    );
    let path = write(
        &dir,
        "nodur.yaml",
        &SHORT.replace("testDurationSeconds: 1\n", ""),
    );
    let text = workload::load_plan(&path).unwrap_err().to_string();
    assert!(text.contains("testDurationMinutes"), "{text}");
    let path = write(&dir, "bad.yaml", "name: [unclosed\n");
    let text = workload::load_plan(&path).unwrap_err().to_string();
    assert!(text.contains("bad.yaml"), "{text}");
    let text = workload::load_plan(&dir.join("absent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(text.contains("absent.yaml"), "{text}");
}

#[tokio::test]
async fn workload_a_backend_cannot_express_names_file_and_field() {
    let dir = tmp();
    let path = write(
        &dir,
        "parts.yaml",
        &SHORT.replace("partitionsPerTopic: 1", "partitionsPerTopic: 16"),
    );
    let plan = workload::load_plan(&path).unwrap();
    let backend = mailroom::connect("memory://").await.unwrap();
    let driver = MailroomDriver::new(backend);
    let e = driver.check(&plan).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let text = e.to_string();
    assert!(
        text.contains("parts.yaml") && text.contains("partitionsPerTopic"),
        "{text}"
    );
    // And a run refuses it before creating anything.
    let e = runner::run(Arc::new(driver), &plan, &quiet())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[tokio::test]
async fn unreachable_or_unknown_backend_is_a_clear_error() {
    // No backend for the scheme in this build (or, with the feature, nothing listening).
    let e = match mailroom::connect("amqp://guest:secret@127.0.0.1:1/%2f").await {
        Err(e) => e,
        Ok(_) => panic!("nothing listens on port 1"),
    };
    let text = e.to_string();
    assert!(!text.contains("secret"), "password leaked: {text}");
    assert!(
        text.contains("127.0.0.1") || text.contains("amqp"),
        "{text}"
    );
    let e = match mailroom::connect("nats://127.0.0.1:4222").await {
        Err(e) => e,
        Ok(_) => panic!("no nats backend"),
    };
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("nats"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_overhead_is_a_ratio() {
    let o = mailroom_bench::overhead::measure(std::time::Duration::from_millis(300), 1, 100)
        .await
        .unwrap();
    assert!(o.bare_rate > 0.0 && o.harness_rate > 0.0 && o.ratio > 0.0);
}

/// Raw mpsc (in order) whose consumers hold each message for `hold(message)` before handing
/// it out: a stand-in for a slow or a high-latency broker.
struct Holding {
    inner: RawMpscDriver,
    hold: fn(&Incoming) -> Duration,
}

impl Holding {
    fn new(hold: fn(&Incoming) -> Duration) -> Self {
        Holding {
            inner: RawMpscDriver::new(),
            hold,
        }
    }
}

/// Consumers that take 20 ms per message: no step of a search is sustainable.
fn slow(_: &Incoming) -> Duration {
    Duration::from_millis(20)
}

/// Each message handed out 300 ms after it was meant to be sent: a broker that keeps up at
/// any rate but always holds 0.3 s of messages in flight (as a broker with a long fetch wait
/// does).
fn lagging(m: &Incoming) -> Duration {
    let due = m.intended_us.unwrap_or(0) + 300_000;
    Duration::from_micros(due.saturating_sub(mailroom_bench::driver::now_us()))
}

struct HoldingConsumer {
    inner: Box<dyn DriverConsumer>,
    hold: fn(&Incoming) -> Duration,
}

#[async_trait::async_trait]
impl DriverConsumer for HoldingConsumer {
    async fn receive(&mut self, timeout: Duration) -> mailroom::Result<Option<Incoming>> {
        let got = self.inner.receive(timeout).await?;
        if let Some(m) = &got {
            tokio::time::sleep((self.hold)(m)).await;
        }
        Ok(got)
    }

    async fn close(&mut self) -> mailroom::Result<()> {
        self.inner.close().await
    }
}

#[async_trait::async_trait]
impl Driver for Holding {
    fn name(&self) -> String {
        "holding".into()
    }
    async fn server_version(&self) -> String {
        "raw mpsc with consumers that hold each message".into()
    }
    fn check(&self, plan: &workload::Plan) -> mailroom::Result<()> {
        self.inner.check(plan)
    }
    async fn create(&self, topic: &TopicPlan) -> mailroom::Result<()> {
        self.inner.create(topic).await
    }
    async fn producer(&self, topic: &TopicPlan) -> mailroom::Result<Box<dyn DriverProducer>> {
        self.inner.producer(topic).await
    }
    async fn consumer(
        &self,
        topic: &TopicPlan,
        subscription: &str,
    ) -> mailroom::Result<Box<dyn DriverConsumer>> {
        Ok(Box::new(HoldingConsumer {
            inner: self.inner.consumer(topic, subscription).await?,
            hold: self.hold,
        }))
    }
    async fn delete(&self, topic: &TopicPlan) -> mailroom::Result<()> {
        self.inner.delete(topic).await
    }
    fn delivers_in_order(&self) -> bool {
        self.inner.delivers_in_order()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_search_reports_no_sustainable_rate_instead_of_collapsing() {
    // Halving at most per missed step, 5000 msgs/s reaches the lowest step (50) in 7 steps.
    let search = SHORT
        .replace(
            "producerRate: 500",
            "producerRate: 0\nproducerStartRate: 5000\nacceptableBacklog: 100",
        )
        .replace("warmupDurationSeconds: 0.2", "warmupDurationSeconds: 4.5");
    let plan = Workload::from_yaml(&search, "search.yaml")
        .unwrap()
        .plan("search.yaml", None)
        .unwrap();
    let r = runner::run(Arc::new(Holding::new(slow)), &plan, &quiet())
        .await
        .unwrap();
    // The lowest step is producerStartRate / 100: the search never goes below it.
    let lowest = 5000.0 / runner::SEARCH_FLOOR_DIVISOR;
    match &r.mailroom.max_rate {
        Some(MaxRate::NotFound {
            lowest_step,
            reason,
        }) => {
            assert_eq!(*lowest_step, lowest);
            assert!(!reason.is_empty());
        }
        other => panic!("expected no sustainable rate, got {other:?}"),
    }
    assert!(r.mailroom.rate_search.iter().all(|s| s.1 >= lowest));
    // The measured run held the lowest step, and says so.
    assert_eq!(r.mailroom.target_rate, lowest);
    let text = r.max_rate_text().unwrap();
    assert!(
        text.starts_with("no sustainable rate found (lowest step 50 msgs/s: "),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["mailroom"]["maxRate"]["outcome"], "notFound");
    assert_eq!(json["mailroom"]["maxRate"]["lowestStep"], 50.0);
    assert!(mailroom_bench::summary::summary_table(&[r]).contains("no sustainable rate found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_drain_ends_when_an_in_order_broker_has_caught_up_despite_its_latency() {
    // At 500 msgs/s a 0.3 s lag keeps ~150 messages in flight, above the count threshold
    // (100 ms of production = 50): only "a message sent after the drain began arrived" can
    // end this drain.
    let drain = SHORT
        .replace("consumerBacklogSizeGB: 0", "consumerBacklogSizeGB: 0.0001")
        .replace("warmupDurationSeconds: 0.2", "warmupDurationSeconds: 0")
        .replace("testDurationSeconds: 1", "testDurationSeconds: 15");
    let plan = Workload::from_yaml(&drain, "drain.yaml")
        .unwrap()
        .plan("drain.yaml", None)
        .unwrap();
    let r = runner::run(Arc::new(Holding::new(lagging)), &plan, &quiet())
        .await
        .unwrap();
    let from = r.mailroom.drain_from.unwrap();
    assert!(from >= 900, "backlog built: {from}");
    let took = r
        .mailroom
        .drain_seconds
        .expect("an in-order broker that caught up counts as drained");
    // The backlog's newest message is due 0.3 s after the drain began, the first new one
    // right after it.
    assert!((0.25..5.0).contains(&took), "drain took {took} s");
}
