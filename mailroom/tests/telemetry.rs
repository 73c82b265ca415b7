//! Traces and metrics seen from outside, as an operator would: one message sent on a broker,
//! bridged by a processor to another, and consumed there leaves ONE OpenTelemetry trace whose
//! spans follow the messaging conventions; the metrics read back after a run count what was
//! sent and consumed.
//!
//! Memory runs everywhere; RabbitMQ → Kafka and SQS need their features and the local brokers
//! (`scripts/brokers.sh up`; `MAILROOM_RABBITMQ_URL`, `MAILROOM_KAFKA_URL`, `MAILROOM_SQS_URL`
//! override the addresses):
//! `cargo test -p mailroom --features otel,rabbitmq,kafka,sqs --test telemetry`

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mailroom::layer::{LayerStack, MetricsLayer, TracingLayer};
use mailroom::processors::Bridge;
use mailroom::{
    Backend, ConsumerOptions, Destination, Message, MessageId, QueueSpec, TraceContext,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

const WAIT: Duration = Duration::from_secs(120);

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn fresh(prefix: &str) -> String {
    // Letters, digits and dashes only: a valid queue or topic name on every broker.
    format!("{prefix}-{}", MessageId::generate())
}

/// Connect, retrying for a while: a broker restarted by another test may still be starting.
async fn connect(url: &str) -> Arc<dyn Backend> {
    let started = Instant::now();
    loop {
        match mailroom::connect(url).await {
            Ok(broker) => return broker,
            Err(e) if e.is_temporary() && started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("broker not reachable (scripts/brokers.sh): {e}"),
        }
    }
}

/// Spans exported to memory, through `tracing-opentelemetry`, for the test's thread.
struct Exported {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _on: tracing::subscriber::DefaultGuard,
}

impl Exported {
    fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("mailroom-telemetry-test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        Exported {
            exporter,
            provider,
            _on: tracing::subscriber::set_default(subscriber),
        }
    }

    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().expect("flushed");
        self.exporter.get_finished_spans().expect("spans")
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn traced(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    LayerStack::new().layer(TracingLayer::new()).apply(backend)
}

/// Send one message on `source`, bridge it to `sink`, consume it there; check that every span
/// this made is in one trace, follows the conventions, and that the trace reached the consumer
/// in the headers.
async fn one_trace_across(
    source: Arc<dyn Backend>,
    sink: Arc<dyn Backend>,
    input: &str,
    output: &str,
) {
    let exported = Exported::install();
    let (source, sink) = (traced(source), traced(sink));
    let (source_system, sink_system) = (source.name(), sink.name());

    let producer = source.producer().await.unwrap();
    producer
        .send(&Destination::queue(input), Message::new("hello"))
        .await
        .unwrap();

    let bridge = Bridge::new(
        source
            .consumer(input, ConsumerOptions::default())
            .await
            .unwrap(),
        Arc::from(sink.producer().await.unwrap()),
        Destination::queue(output),
    );
    let mut consumer = sink
        .consumer(output, ConsumerOptions::default())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consume = async {
        let delivery = consumer
            .receive_timeout(WAIT)
            .await
            .unwrap()
            .expect("the bridged message");
        let carried = TraceContext::extract(delivery.message().headers()).expect("traceparent");
        delivery.ack().await.unwrap();
        let _ = stop.send(());
        carried
    };
    let (stats, carried) = tokio::join!(
        bridge.run(async {
            let _ = stopped.await;
        }),
        consume
    );
    assert_eq!(stats.unwrap().forwarded, 1);
    consumer.close().await.unwrap();

    // The messaging spans: a broker's client library may add spans of its own (the AWS SDK
    // does), in traces of their own when they run outside ours.
    let spans: Vec<SpanData> = exported
        .spans()
        .into_iter()
        .filter(|s| attribute(s, "messaging.operation.type").is_some())
        .collect();
    let traces: BTreeSet<u128> = spans
        .iter()
        .map(|s| u128::from_be_bytes(s.span_context.trace_id().to_bytes()))
        .collect();
    let described: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {:?} {}", s.name, s.span_kind, s.span_context.trace_id()))
        .collect();
    assert_eq!(traces.len(), 1, "one trace, got {described:#?}");
    let trace = *traces.iter().next().unwrap();
    assert_eq!(
        trace,
        carried.trace_id(),
        "the consumer's headers carry the trace"
    );

    let find = |name: &str, kind: SpanKind, system: Option<&str>| -> &SpanData {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.span_kind == kind
                    && system
                        .is_none_or(|sys| attribute(s, "messaging.system").as_deref() == Some(sys))
            })
            .unwrap_or_else(|| panic!("no span {name:?} {kind:?} {system:?} in {described:#?}"))
    };
    let first_send = find(
        &format!("send {input}"),
        SpanKind::Producer,
        Some(source_system),
    );
    let bridge_receive = find(
        &format!("receive {input}"),
        SpanKind::Client,
        Some(source_system),
    );
    let process = find(&format!("process {input}"), SpanKind::Consumer, None);
    let second_send = find(
        &format!("send {output}"),
        SpanKind::Producer,
        Some(sink_system),
    );
    let last_receive = find(
        &format!("receive {output}"),
        SpanKind::Client,
        Some(sink_system),
    );
    find(
        &format!("ack {input}"),
        SpanKind::Client,
        Some(source_system),
    );
    find(
        &format!("ack {output}"),
        SpanKind::Client,
        Some(sink_system),
    );

    // The causal chain: send -> (receive, process) -> send -> receive.
    let id = |s: &SpanData| s.span_context.span_id();
    assert_eq!(bridge_receive.parent_span_id, id(first_send));
    assert_eq!(process.parent_span_id, id(first_send));
    assert_eq!(second_send.parent_span_id, id(process));
    assert_eq!(last_receive.parent_span_id, id(second_send));
    assert_eq!(
        u64::from_be_bytes(id(second_send).to_bytes()),
        carried.span_id()
    );

    for (span, operation) in [
        (first_send, "send"),
        (bridge_receive, "receive"),
        (process, "process"),
        (second_send, "send"),
        (last_receive, "receive"),
    ] {
        assert_eq!(
            attribute(span, "messaging.operation.type").as_deref(),
            Some(operation),
            "{}",
            span.name
        );
        assert!(
            attribute(span, "messaging.destination.name").is_some(),
            "{}",
            span.name
        );
    }
    for receive in [bridge_receive, last_receive, process] {
        assert!(attribute(receive, "messaging.message.id").is_some());
    }
    // Where the broker has them: the Kafka group (named after the queue) and the RabbitMQ
    // routing key (a queue's name, through the default exchange); absent elsewhere.
    for (span, system, queue) in [
        (bridge_receive, source_system, input),
        (process, source_system, input),
        (last_receive, sink_system, output),
    ] {
        let expect = |on: &str| (system == on).then(|| queue.to_owned());
        assert_eq!(
            attribute(span, "messaging.consumer.group.name"),
            expect("kafka"),
            "{}",
            span.name
        );
        assert_eq!(
            attribute(span, "messaging.rabbitmq.destination.routing_key"),
            expect("rabbitmq"),
            "{}",
            span.name
        );
    }
}

#[tokio::test]
async fn memory_bridge_keeps_one_trace() {
    let broker = mailroom::connect("memory://").await.unwrap();
    let (input, output) = (fresh("tr-in"), fresh("tr-out"));
    for q in [&input, &output] {
        broker
            .topology()
            .declare_queue(&QueueSpec::new(q))
            .await
            .unwrap();
    }
    one_trace_across(broker.clone(), broker, &input, &output).await;
}

#[cfg(all(feature = "rabbitmq", feature = "kafka"))]
#[tokio::test]
async fn rabbitmq_to_kafka_bridge_keeps_one_trace() {
    let rabbit = connect(&url(
        "MAILROOM_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    ))
    .await;
    let kafka = connect(&url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092")).await;
    let (input, output) = (fresh("tr-in"), fresh("tr-out"));
    rabbit
        .topology()
        .declare_queue(&QueueSpec::new(&input))
        .await
        .unwrap();
    kafka
        .topology()
        .declare_queue(&QueueSpec::new(&output))
        .await
        .unwrap();
    one_trace_across(rabbit, kafka, &input, &output).await;
}

#[cfg(feature = "sqs")]
#[tokio::test]
async fn sqs_bridge_keeps_one_trace() {
    let sqs = connect(&url(
        "MAILROOM_SQS_URL",
        "sqs://127.0.0.1:4566?region=us-east-1",
    ))
    .await;
    let (input, output) = (fresh("tr-in"), fresh("tr-out"));
    for q in [&input, &output] {
        sqs.topology()
            .declare_queue(&QueueSpec::new(q))
            .await
            .unwrap();
    }
    one_trace_across(sqs.clone(), sqs, &input, &output).await;
}

/// The recorder of this test binary, installed once (the facade takes one global recorder).
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// Held by a test from recording what it reads to its snapshot: a snapshot of the debugging
/// recorder drains every counter and gauge (it swaps them to 0), tests run in parallel, and one
/// test's snapshot would otherwise take what another recorded.
static SNAPSHOTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// Every counter named `name` whose destination label is `destination`, summed.
fn counted(snapshot: &Snapshot, name: &str, destination: &str) -> u64 {
    snapshot
        .iter()
        .filter(|(key, _, _, _)| key.kind() == MetricKind::Counter && key.key().name() == name)
        .filter(|(key, _, _, _)| {
            key.key()
                .labels()
                .any(|l| l.key() == "messaging.destination.name" && l.value() == destination)
        })
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_after_a_run_count_what_was_sent_and_consumed() {
    let snapshotter = recorder();
    let _alone = SNAPSHOTS.lock().await;
    let broker = LayerStack::new()
        .layer(MetricsLayer::new())
        .apply(mailroom::connect("memory://").await.unwrap());
    let queue = fresh("metered");
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    let destination = Destination::queue(&queue);
    let producer = broker.producer().await.unwrap();
    // 37 one at a time, 63 as a batch: both paths counted.
    for i in 0..37 {
        producer
            .send(&destination, Message::new(format!("{i}")))
            .await
            .unwrap();
    }
    let batch = (0..63).map(|i| Message::new(format!("b{i}"))).collect();
    for result in producer.send_batch(&destination, batch).await.unwrap() {
        result.unwrap();
    }
    let mut consumer = broker
        .consumer(&queue, ConsumerOptions::default())
        .await
        .unwrap();
    let mut consumed = 0;
    while let Some(delivery) = consumer
        .receive_timeout(Duration::from_millis(500))
        .await
        .unwrap()
    {
        delivery.ack().await.unwrap();
        consumed += 1;
    }
    assert_eq!(consumed, 100);

    // One snapshot: reading the recorder drains its histograms.
    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(
        counted(&snapshot, mailroom::layer::SENT_MESSAGES, &queue),
        100
    );
    assert_eq!(
        counted(&snapshot, mailroom::layer::CONSUMED_MESSAGES, &queue),
        100
    );
    let durations: HashMap<String, usize> = snapshot
        .iter()
        .filter(|(key, _, _, _)| key.key().name() == mailroom::layer::OPERATION_DURATION)
        .filter(|(key, _, _, _)| {
            key.key()
                .labels()
                .any(|l| l.key() == "messaging.destination.name" && l.value() == queue)
        })
        .filter_map(|(key, _, _, value)| {
            let operation = key
                .key()
                .labels()
                .find(|l| l.key() == "messaging.operation.type")?
                .value()
                .to_owned();
            match value {
                DebugValue::Histogram(samples) => Some((operation, samples.len())),
                _ => None,
            }
        })
        .fold(HashMap::new(), |mut all, (operation, n)| {
            *all.entry(operation).or_default() += n;
            all
        });
    assert_eq!(durations.get("send"), Some(&100), "{durations:?}");
    assert!(
        durations.get("receive").is_some_and(|n| *n > 0),
        "{durations:?}"
    );
}

/// The [`QUEUE_DEPTH`](mailroom::layer::QUEUE_DEPTH) gauge of `queue`, as last published.
fn depth_gauge(snapshotter: &Snapshotter, queue: &str) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| {
            key.kind() == MetricKind::Gauge && key.key().name() == mailroom::layer::QUEUE_DEPTH
        })
        .filter(|(key, _, _, _)| {
            key.key()
                .labels()
                .any(|l| l.key() == "messaging.destination.name" && l.value() == queue)
        })
        .find_map(|(_, _, _, value)| match value {
            DebugValue::Gauge(v) => Some(v.into_inner()),
            _ => None,
        })
}

/// Publish `queue`'s depth until it reads `want` (brokers count asynchronously: SQS's figure
/// is approximate, Kafka's committed offsets land after the commit), and check the gauge says
/// the same.
async fn depth_reaches(broker: &dyn Backend, queue: &str, want: u64) {
    let started = Instant::now();
    let mut last = None;
    let mut gauge = None;
    while started.elapsed() < WAIT {
        let held = SNAPSHOTS.lock().await;
        last = mailroom::layer::publish_queue_depth(broker, queue)
            .await
            .unwrap();
        gauge = depth_gauge(recorder(), queue);
        if last == Some(want) {
            break;
        }
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, Some(want), "depth of '{queue}' on {}", broker.name());
    assert_eq!(gauge, Some(want as f64), "the gauge says what was read");
}

/// Send 7 messages, read a depth of 7; consume and ack 3, read 4. Through a layered backend,
/// so the layers are seen to pass the question on.
async fn depth_follows_the_queue(broker: Arc<dyn Backend>) {
    recorder();
    let broker = LayerStack::new()
        .layer(MetricsLayer::new())
        .layer(TracingLayer::new())
        .apply(broker);
    let queue = fresh("depth");
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    depth_reaches(&*broker, &queue, 0).await;
    let producer = broker.producer().await.unwrap();
    let destination = Destination::queue(&queue);
    for i in 0..7 {
        producer
            .send(&destination, Message::new(format!("{i}")))
            .await
            .unwrap();
    }
    depth_reaches(&*broker, &queue, 7).await;
    let mut consumer = broker
        .consumer(&queue, ConsumerOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        let delivery = consumer
            .receive_timeout(WAIT)
            .await
            .unwrap()
            .expect("a message within the wait");
        delivery.ack().await.unwrap();
    }
    // Closing commits the acked prefix (Kafka) and returns prefetched messages (RabbitMQ).
    consumer.close().await.unwrap();
    depth_reaches(&*broker, &queue, 4).await;
    broker.topology().delete_queue(&queue).await.unwrap();

    // A queue that was never declared is named as missing, not read as empty.
    let missing = fresh("never-declared");
    let err = broker.topology().queue_depth(&missing).await.unwrap_err();
    assert_eq!(err.kind(), mailroom::ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn memory_queue_depth_is_published() {
    depth_follows_the_queue(mailroom::connect("memory://").await.unwrap()).await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test]
async fn rabbitmq_queue_depth_is_published() {
    let rabbit = connect(&url(
        "MAILROOM_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    ))
    .await;
    depth_follows_the_queue(rabbit).await;
}

#[cfg(feature = "sqs")]
#[tokio::test]
async fn sqs_queue_depth_is_published() {
    let sqs = connect(&url(
        "MAILROOM_SQS_URL",
        "sqs://127.0.0.1:4566?region=us-east-1",
    ))
    .await;
    depth_follows_the_queue(sqs).await;
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_consumer_lag_is_published() {
    let kafka = connect(&url("MAILROOM_KAFKA_URL", "kafka://127.0.0.1:9092")).await;
    depth_follows_the_queue(kafka).await;
}
