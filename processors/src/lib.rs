//! mailroom-processors: streaming pipelines over any mailroom backend.
//!
//! A pipeline reads from one or more sources (any [`Consumer`](mailroom_core::Consumer)),
//! passes each item through typed stages, and writes to one or more sinks (any
//! [`Producer`](mailroom_core::Producer)):
//!
//! ```no_run
//! # async fn demo(broker: std::sync::Arc<dyn mailroom_core::Backend>) -> mailroom_core::Result<()> {
//! use std::sync::Arc;
//! use mailroom_core::{Destination, Message};
//! use mailroom_processors::{stage, ErrorPolicy, Pipeline, Sink};
//!
//! let out: Arc<dyn mailroom_core::Producer> = Arc::from(broker.producer().await?);
//! let report = Pipeline::builder()
//!     .max_in_flight(512)
//!     .source(broker.consumer("orders", Default::default()).await?)
//!     .flow()
//!     .decode::<serde_json::Value>(
//!         stage("decode").on_error(ErrorPolicy::dead_letter(Sink::new(out.clone(), Destination::queue("orders.dlq")))),
//!     )
//!     .filter("paid", |v| v["paid"] == true)
//!     .encode("encode")
//!     .to(Sink::new(out, Destination::queue("paid-orders")))?
//!     .run()
//!     .await;
//! # Ok(()) }
//! ```
//!
//! **At-least-once by construction.** Every input carries a token; everything derived from it
//! (a mapped item, each output of a `flat_map`, each sink of a fan-out, a batch, a window
//! result) holds a share of it. The input is acked only when every share is finished: confirmed
//! by its sink, filtered out, skipped or dead-lettered (and the dead letter confirmed). A share
//! that is dropped instead (a failed pipeline, a drain timeout, an aborted task) leaves the input
//! unsettled, so the broker redelivers it. Inputs are acked individually as they finish, in any
//! order; a backend with offsets (Kafka) turns those acks into its contiguous-prefix commit.
//!
//! **Bounded.** At most `max_in_flight` inputs are held at once, from receive to settle; the
//! sources wait for a free slot, so a slow sink slows the sources and memory stays bounded.
//!
//! **Hand-over.** A pipeline with one sink gives each message to a producer that takes it
//! without waiting ([`try_enqueue`](mailroom_core::Producer::try_enqueue), the memory broker)
//! as soon as it is ready. Otherwise it hands the producer everything the stages have ready (up
//! to 8 messages) in one [`enqueue_batch`](mailroom_core::Producer::enqueue_batch), in order;
//! it never waits to fill a batch, so latency does not grow. Each message is still confirmed
//! and settled on its own. A producer that answers for a different number of messages than it
//! was given stops the pipeline, with none of that batch's inputs acked.
//!
//! **Shutdown.** On a signal or a handle the sources stop taking deliveries, the stages drain
//! (batches and open windows are flushed) within the drain timeout, and only then are the
//! sources closed: a backend may finish batched acks in `close` (SQS), and RabbitMQ hands back
//! every unacked delivery when its channel closes, so closing first would turn the drain's acks
//! into duplicates. The [`Report`] names what could not be finished.
//!
//! **Ordering.** Synchronous stages keep arrival order. Async stages ([`Flow::then`]) run
//! several items at once under the pipeline's [`Ordering`]: per key (same key in order, different
//! keys in parallel), per partition, or unordered. That is the order items reach the sink
//! in, and the order of the outputs while sends succeed. Sends are pipelined, so a message
//! whose send fails lands after those sent behind it, whether the sink retries it or the
//! pipeline stops and its input is redelivered (as with any producer that keeps more than one
//! send in flight); at-least-once holds either way, order per key does not.
//!
//! **Errors.** Each stage has an [`ErrorPolicy`]: fail the pipeline, skip, retry with
//! exponential backoff and jitter, dead-letter the original input to any producer (with headers
//! naming the stage, the error, the attempt and the source), or requeue it to the broker. A
//! panic in user code (every stage function, key and event-time extractors, a window's `init`
//! and `fold`, a router) is caught and handled as that input's error; a panic in a session
//! window's `merge` blames no one input, so it fails the pipeline.
//!
//! **Windows.** [`Flow::window`] groups items per key into tumbling, hopping or session windows
//! on event time (watermarks, allowed lateness, late data to a side output) or processing time.
//! The inputs of a window are settled only when the window's result is confirmed by the sink
//! (*settle after result*): a crash before that redelivers them, and the restarted pipeline
//! computes the result again. Nothing durable is needed, at the price of holding those inputs
//! unsettled while their window is open (they count against `max_in_flight`; a window stage
//! fires its oldest window early, marked partial, when it holds too many).
//!
//! **Scale-out** goes through the broker: run the same pipeline N times on a queue with
//! competing consumers or a Kafka consumer group. Keyed state is only correct when each key
//! reaches one instance, so a keyed window in a pipeline marked
//! [`scaled_out`](PipelineBuilder::scaled_out) is refused unless every source is declared
//! [`partitioned_by_key`](Source::partitioned_by_key), or the flow first goes through a keyed
//! topic with [`Flow::repartition_by_key`].
//!
//! **Exactly-once (Kafka → Kafka).** A [`Pipeline`] is at least once: a crash between an
//! output's confirm and its input's ack produces the output again. Where the source and the sink
//! are one cluster that declares `transactions` (Kafka), [`ExactlyOnce`] runs a transform in
//! broker transactions instead: a batch of inputs, their outputs and their dead letters commit
//! together, so readers of committed data (Kafka consumers by default) see each output once,
//! across crashes and restarts. Side effects outside the broker stay at least once; each output
//! waits for its batch's commit. See [`exactly_once`] for what it covers, what it does not, and
//! its costs; building one on any other pair of backends is `Unsupported` or `Config`.
//!
//! [`TestDriver`] runs a pipeline on the in-memory broker under tokio's paused clock, for
//! deterministic tests without sleeps.

mod batch;
mod bridge;
mod concurrent;
pub mod exactly_once;
mod flow;
mod in_flight;
mod metrics;
mod policy;
mod repartition;
mod run;
mod sink;
mod stage;
pub mod test_driver;
mod token;
mod window;

pub use batch::{Batch, ByteSize};
pub use bridge::{Bridge, BridgeStats, Transform};
pub use exactly_once::{ExactlyOnce, ExactlyOnceBuilder, ExactlyOnceReport, ExactlyOnceTransform};
pub use flow::{Flow, Ordering, Partitioning, Pipeline, PipelineBuilder, Source};
pub use metrics::{Metrics, Snapshot, StageSnapshot, PIPELINE_METRIC_PREFIX};
pub use policy::{Backoff, ErrorPolicy};
pub use run::{PipelineHandle, Report};
pub use sink::{default_sink_policy, Sink};
pub use stage::{
    stage, StageSpec, DEAD_LETTER_DELIVERY_ATTEMPT_HEADER, DEAD_LETTER_ERROR_KIND_HEADER,
    DEAD_LETTER_OFFSET_HEADER, DEAD_LETTER_PARTITION_HEADER, DEAD_LETTER_STAGE_HEADER,
};
pub use test_driver::TestDriver;
pub use window::{Window, WindowProbe, WindowSpec, Windowed, WindowedFlow};

/// The pipeline test driver under its former name.
///
/// Renamed to [`test_driver`] after what it holds, so that it does not read as the backend
/// conformance kit (`mailroom_core::testkit`, becoming the `mailroom-testkit` crate).
#[deprecated(note = "renamed to `mailroom_processors::test_driver`")]
pub mod testing {
    /// [`TestDriver`](crate::TestDriver) under its former path.
    // A deprecated alias rather than a `pub use`: rustc does not warn on a path through a
    // deprecated module, but does on a deprecated alias.
    #[deprecated(note = "use `mailroom_processors::TestDriver` (or `test_driver::TestDriver`)")]
    pub type TestDriver = crate::test_driver::TestDriver;
}
