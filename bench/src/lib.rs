//! mailroom-bench: measuring brokers. The quick `mailroom bench`, the OMB-compatible workload
//! harness, and `mailroom compare` (the `mailroom` command itself is the `mailroom-cli` crate).
//!
//! Broker features (`rabbitmq`, `kafka`, `sqs`) add the backend and its raw-client baseline. The
//! built-in workloads are `bench/workloads/*.yaml`; the raw-client benchmarks (`cargo bench -p
//! mailroom-bench --all-features --bench vs_lapin`, `vs_rdkafka`, `vs_sdk`) are `bench/benches/`.
//!
//! - [`quick`]: one producer, one consumer, throughput + a paced latency run, and the same work
//!   on a raw `tokio::sync::mpsc` channel (its items are re-exported here).
//! - [`workload`]: workloads in OpenMessaging Benchmark YAML ([`workload::Workload`]).
//! - [`driver`]: what the harness drives: every mailroom backend by URL, and raw mpsc.
//! - [`raw`]: raw-client baselines (lapin, rdkafka, aws-sdk-sqs, mpsc) by `raw+URL`.
//! - [`runner`]: open-loop runs with HdrHistogram percentiles and periodic stats.
//! - [`result`]: OMB-format result JSON and the summary table.
//! - [`compare`] and [`report`]: runs on several backends, conformance, Markdown + HTML.
//! - [`overhead`]: the harness's own cost, raw mpsc through the harness vs a bare loop.
//! - [`persistence`]: the broker-restart scenario on the local brokers (`--restart-brokers`).
//! - [`pacer`]: the open-loop schedule, with wake-ups accurate to microseconds.
//! - [`versus`]: closed-loop rounds, a backend against its raw client (the `vs_*` benches).
//! - [`scaling`]: how throughput and p99 change with producers/consumers and payload size
//!   (`compare --scaling`).
//! - [`routing_cost`]: what topic-pattern routing costs a subscriber, native vs client-side
//!   (run by `compare` with the conformance suite).
//! - [`peers`]: another Rust queue library as a second baseline (`peer+URL`; omniqueue with
//!   the `peers` feature, [`peer_omniqueue`]).

pub mod compare;
pub mod cpu;
pub mod driver;
pub mod overhead;
pub mod pacer;
#[cfg(feature = "peers")]
pub mod peer_omniqueue;
pub mod peers;
pub mod persistence;
pub mod quick;
pub mod raw;
#[cfg(feature = "kafka")]
pub mod raw_kafka;
#[cfg(feature = "rabbitmq")]
pub mod raw_lapin;
#[cfg(feature = "sqs")]
pub mod raw_sqs;
pub mod report;
pub mod result;
pub mod routing_cost;
pub mod runner;
pub mod scaling;
pub mod summary;
pub mod versus;
pub mod workload;

pub use quick::*;
