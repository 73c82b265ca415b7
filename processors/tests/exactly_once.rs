//! The exactly-once pipeline without a broker: where it is refused (memory, another broker,
//! another cluster, a cluster that cannot be told), and its transaction loop over a scripted
//! transactional unit (outputs and dead letters commit with their inputs; an aborted
//! transaction's inputs come again; a permanent error stops it). The memory broker has no
//! transactions, so a small scripted broker stands in; the failures (aborted and fenced
//! commits) come from a chaos layer over it.
//!
//! The same pipeline over Apache Kafka, SIGKILLed mid-run, is `tests/processors_kafka_exactly_once.rs`
//! in the `mailroom` crate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom_core::delivery::DEAD_LETTER_REASON_HEADER;
use mailroom_core::layer::{ChaosLayer, Fault, LayerStack, Operation, When};
use mailroom_core::{
    Backend, Capabilities, Consumer, ConsumerOptions, DeliveryInfo, Destination, Error, ErrorKind,
    Message, Producer, Result, Topology, TransactionCounts, TransactionInput, TransactionOptions,
    Transactional,
};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{ExactlyOnce, ExactlyOnceReport};

/// Bounds every test here: none waits on a broker, so this only catches a hung loop.
const BOUND: Duration = Duration::from_secs(30);

/// A broker with one queue and committed-only visibility, scripted for the transaction loop.
#[derive(Default)]
struct Script {
    /// Inputs not consumed by a committed transaction, in order.
    queue: VecDeque<Message>,
    /// Outputs of committed transactions, by destination name.
    committed: Vec<(String, Message)>,
    /// Inputs consumed by committed transactions.
    consumed: usize,
}

type Shared = Arc<Mutex<Script>>;

struct FakeBackend {
    name: &'static str,
    capabilities: Capabilities,
    cluster: Option<String>,
    script: Shared,
}

fn fake(name: &'static str, cluster: Option<&str>) -> FakeBackend {
    let mut capabilities = Capabilities::default();
    capabilities.transactions = true;
    FakeBackend {
        name,
        capabilities,
        cluster: cluster.map(str::to_owned),
        script: Shared::default(),
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    async fn server_version(&self) -> Result<String> {
        Ok("scripted".into())
    }
    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Err(Error::unsupported(
            "scripted backend: transactional units only",
        ))
    }
    async fn consumer(&self, _: &str, _: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Err(Error::unsupported(
            "scripted backend: transactional units only",
        ))
    }
    fn topology(&self) -> &dyn Topology {
        panic!("the exactly-once pipeline declares nothing")
    }
    async fn transactional(
        &self,
        queue: &str,
        _: TransactionOptions,
    ) -> Result<Box<dyn Transactional>> {
        Ok(Box::new(FakeUnit {
            script: self.script.clone(),
            queue: queue.to_owned(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }))
    }
    async fn cluster_id(&self) -> Result<Option<String>> {
        Ok(self.cluster.clone())
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

struct FakeUnit {
    script: Shared,
    queue: String,
    inputs: Vec<Message>,
    outputs: Vec<(String, Message)>,
}

impl FakeUnit {
    fn rewind(&mut self) {
        let mut script = self.script.lock().unwrap();
        for m in self.inputs.drain(..).rev() {
            script.queue.push_front(m);
        }
        self.outputs.clear();
    }
}

#[async_trait]
impl Transactional for FakeUnit {
    async fn receive(&mut self) -> Result<TransactionInput> {
        loop {
            let next = self.script.lock().unwrap().queue.pop_front();
            if let Some(message) = next {
                self.inputs.push(message.clone());
                return Ok(TransactionInput {
                    message,
                    info: DeliveryInfo::new(self.queue.clone()),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    async fn send(&mut self, destination: &Destination, message: Message) -> Result<()> {
        self.outputs.push((destination.name().to_owned(), message));
        Ok(())
    }
    fn pending(&self) -> TransactionCounts {
        TransactionCounts {
            inputs: self.inputs.len(),
            outputs: self.outputs.len(),
        }
    }
    async fn commit(&mut self) -> Result<TransactionCounts> {
        let counts = self.pending();
        let mut script = self.script.lock().unwrap();
        script.consumed += self.inputs.len();
        script.committed.append(&mut self.outputs);
        self.inputs.clear();
        Ok(counts)
    }
    async fn abort(&mut self) -> Result<()> {
        self.rewind();
        Ok(())
    }
    async fn close(&mut self) -> Result<()> {
        self.rewind();
        Ok(())
    }
}

/// Another handle on `backend`'s script whose commits fail as `fault` says, when `when`.
fn failing_commits(backend: &FakeBackend, when: When, fault: Fault) -> Arc<dyn Backend> {
    let handle = Arc::new(FakeBackend {
        script: backend.script.clone(),
        ..fake("fake", Some("c1"))
    });
    LayerStack::new()
        .layer(ChaosLayer::new(0).inject(Operation::Commit, when, fault))
        .apply(handle)
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.payload()).into_owned()
}

/// Run `pipeline` until `done(script)` or an error, under `BOUND`.
async fn run_until(
    backend: &FakeBackend,
    pipeline: ExactlyOnce,
    done: impl Fn(&Script) -> bool + Send + 'static,
) -> ExactlyOnceReport {
    let script = backend.script.clone();
    let finished = async move {
        while !done(&script.lock().unwrap()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(BOUND, pipeline.run_until(finished))
        .await
        .expect("the exactly-once loop did not finish within the bound")
}

fn uppercase_or_fail(input: &TransactionInput) -> Result<Vec<Message>> {
    let text = text(&input.message);
    if text.starts_with("bad") {
        return Err(Error::new(ErrorKind::Decode, format!("cannot read {text}")));
    }
    Ok(vec![Message::new(text.to_uppercase())])
}

#[tokio::test]
async fn outputs_and_dead_letters_commit_with_their_inputs_and_aborts_redo_them() {
    let backend = fake("fake", Some("c1"));
    {
        let mut script = backend.script.lock().unwrap();
        for i in 0..100 {
            let text = if i % 10 == 3 {
                format!("bad {i}")
            } else {
                format!("item {i}")
            };
            script.queue.push_back(Message::new(text));
        }
    }
    // The first two commits are refused as aborted: their inputs must come again.
    let source = failing_commits(&backend, When::First(2), Fault::Fail(ErrorKind::Aborted));
    // Another handle on the same cluster: the sink passes the cluster check.
    let same_cluster: Arc<dyn Backend> = Arc::new(fake("fake", Some("c1")));
    let pipeline = ExactlyOnce::builder(source, "in", TransactionOptions::new("eo-1"))
        .sink(same_cluster, Destination::queue("out"))
        .dead_letter(Destination::queue("dead"))
        .transform(uppercase_or_fail)
        .max_batch(16)
        .commit_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let report = run_until(&backend, pipeline, |s| s.consumed == 100).await;
    assert!(report.error.is_none(), "{:?}", report.error);

    let script = backend.script.lock().unwrap();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (dest, m) in &script.committed {
        *seen.entry((dest.clone(), text(m))).or_default() += 1;
    }
    for i in 0..100 {
        let expected = if i % 10 == 3 {
            ("dead".to_owned(), format!("bad {i}"))
        } else {
            ("out".to_owned(), format!("ITEM {i}"))
        };
        assert_eq!(seen.get(&expected), Some(&1), "{expected:?} in {seen:?}");
    }
    assert_eq!(script.committed.len(), 100, "nothing else committed");
    let dead = script
        .committed
        .iter()
        .find(|(d, _)| d == "dead")
        .map(|(_, m)| m)
        .unwrap();
    assert!(dead
        .headers()
        .get(DEAD_LETTER_REASON_HEADER)
        .is_some_and(|r| r.contains("cannot read")));
    assert_eq!(
        (
            report.inputs,
            report.outputs,
            report.dead_lettered,
            report.aborts
        ),
        (100, 90, 10, 2),
        "{report:?}"
    );
    assert!(report.commits >= 100 / 16, "{report:?}");
}

#[tokio::test]
async fn a_failing_transform_without_dead_letters_stops_and_commits_none_of_its_batch() {
    let backend = fake("fake", Some("c1"));
    {
        let mut script = backend.script.lock().unwrap();
        for text in ["item 0", "item 1", "bad 2", "item 3"] {
            script.queue.push_back(Message::new(text));
        }
    }
    let source: Arc<dyn Backend> = Arc::new(FakeBackend {
        script: backend.script.clone(),
        ..fake("fake", Some("c1"))
    });
    let pipeline = ExactlyOnce::builder(source.clone(), "in", TransactionOptions::new("eo-2"))
        .sink(source, Destination::queue("out"))
        .transform(uppercase_or_fail)
        // One transaction for all four: the failure must take the two before it down too.
        .max_batch(100)
        .commit_interval(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let report = run_until(&backend, pipeline, |_| false).await;
    let error = report.error.expect("the failing input stops the run");
    assert_eq!(error.kind(), ErrorKind::Decode, "{error}");
    assert!(
        error.message().contains("no dead-letter destination"),
        "{error}"
    );
    let script = backend.script.lock().unwrap();
    assert!(script.committed.is_empty(), "{:?}", script.committed.len());
    assert_eq!(script.queue.len(), 4, "every input is back in the queue");
    assert_eq!(report.inputs, 0);
}

#[tokio::test]
async fn a_fenced_commit_stops_the_run() {
    let backend = fake("fake", Some("c1"));
    {
        let mut script = backend.script.lock().unwrap();
        script.queue.push_back(Message::new("item 0"));
    }
    let source = failing_commits(&backend, When::Nth(1), Fault::Fail(ErrorKind::Fenced));
    let pipeline = ExactlyOnce::builder(source.clone(), "in", TransactionOptions::new("eo-3"))
        .sink(source, Destination::queue("out"))
        .commit_interval(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    let report = run_until(&backend, pipeline, |_| false).await;
    let error = report.error.expect("a fenced unit stops the run");
    assert_eq!(error.kind(), ErrorKind::Fenced, "{error}");
    assert!(backend.script.lock().unwrap().committed.is_empty());
}

async fn refusal(source: Arc<dyn Backend>, sink: Arc<dyn Backend>) -> Error {
    match ExactlyOnce::builder(source, "in", TransactionOptions::new("eo"))
        .sink(sink, Destination::queue("out"))
        .build()
        .await
    {
        Ok(pipeline) => panic!("built {pipeline:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn memory_is_refused_as_unsupported_before_any_io() {
    let memory = MemoryBackend::new();
    // Closed first: any I/O would now fail with `Closed`, so `Unsupported` proves there was none.
    memory.close().await.unwrap();
    let memory: Arc<dyn Backend> = Arc::new(memory);
    let error = refusal(memory.clone(), memory.clone()).await;
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert_eq!(error.backend(), Some("memory"));
    assert!(error.message().contains("transactions"), "{error}");

    let transactional: Arc<dyn Backend> = Arc::new(fake("fake", Some("c1")));
    let error = refusal(transactional, memory).await;
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert!(error.message().contains("sink backend 'memory'"), "{error}");
}

#[tokio::test]
async fn a_sink_on_another_broker_or_cluster_is_a_config_error_naming_why() {
    let error = refusal(
        Arc::new(fake("fake-a", Some("c1"))),
        Arc::new(fake("fake-b", Some("c1"))),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(error.message().contains("two brokers"), "{error}");

    let error = refusal(
        Arc::new(fake("fake", Some("c1"))),
        Arc::new(fake("fake", Some("c2"))),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(
        error.message().contains("cluster c1") && error.message().contains("cluster c2"),
        "{error}"
    );

    let error = refusal(
        Arc::new(fake("fake", None)),
        Arc::new(fake("fake", Some("c1"))),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(error.message().contains("cluster unknown"), "{error}");

    let error = match ExactlyOnce::builder(
        Arc::new(fake("fake", Some("c1"))),
        "in",
        TransactionOptions::new("eo"),
    )
    .build()
    .await
    {
        Ok(_) => panic!("built without a sink"),
        Err(e) => e,
    };
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
}
