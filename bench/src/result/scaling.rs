//! Scaling curves in the result JSON: how throughput and end-to-end p99 change as producers and
//! consumers are added and as payloads grow, per backend. `compare --scaling` writes them to
//! `scaling.json` beside the per-run results, and the report is drawn from them alone, so a
//! report can be re-rendered from the file.

use serde::{Deserialize, Serialize};

/// What a curve varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScalingAxis {
    /// Producers and consumers together (N producers, N consumers on one subscription), at
    /// the sweep's fixed payload size.
    Clients,
    /// Payload size, with one producer and one consumer.
    Payload,
}

/// One point of a curve: a saturated closed-loop phase for throughput, then an open-loop run
/// at a fraction of that throughput for latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPoint {
    /// The curve this point is on.
    pub axis: ScalingAxis,
    /// The x-axis label (`4`, `16 KiB`).
    pub label: String,
    /// Producers.
    pub producers: u32,
    /// Consumers (all on one subscription, competing).
    pub consumers: u32,
    /// Partitions of the topic (the consumer count on brokers that partition, else 1).
    pub partitions: u32,
    /// Payload bytes.
    pub message_size: usize,
    /// Messages per second received (and acked) in the saturated phase, every message
    /// confirmed before it counts as sent.
    pub throughput: f64,
    /// The same in MB/s of payload (10^6 bytes).
    pub megabytes_per_second: f64,
    /// The open-loop rate the latency was measured at (msgs/s).
    pub latency_rate: f64,
    /// End-to-end p50 at `latency_rate`, ms.
    pub e2e_p50: f64,
    /// End-to-end p99 at `latency_rate`, ms.
    pub e2e_p99: f64,
    /// Whether the latency run sustained its rate (producers and consumers within 5 %).
    pub latency_sustained: bool,
    /// Why the point has no figures, or what was substituted (a payload that does not fit).
    pub note: Option<String>,
}

impl ScalingPoint {
    /// Whether the point was measured.
    pub fn measured(&self) -> bool {
        self.throughput > 0.0
    }
}

/// How a sweep was run, for the report's caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSettings {
    /// Seconds measured per phase.
    pub step_seconds: f64,
    /// Seconds of warm-up per phase after the first message arrived.
    pub warmup_seconds: f64,
    /// The latency run's rate as a fraction of the point's saturated throughput.
    pub load_fraction: f64,
    /// Payload bytes in flight (sent, not yet received) the saturated phase allows, which
    /// bounds the queue it builds.
    pub in_flight_bytes: usize,
    /// Payload bytes on the clients curve.
    pub clients_message_size: usize,
}

/// One backend's curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSeries {
    /// The backend's name (`memory`, `rabbitmq`, ...).
    pub backend: String,
    /// Its URL, secrets redacted.
    pub url: String,
    /// How the sweep ran.
    pub settings: ScalingSettings,
    /// Every point, clients curve first.
    pub points: Vec<ScalingPoint>,
    /// Seconds the sweep took on this backend.
    pub seconds: f64,
}

impl ScalingSeries {
    /// The points on one curve, in sweep order.
    pub fn curve(&self, axis: ScalingAxis) -> impl Iterator<Item = &ScalingPoint> {
        self.points.iter().filter(move |p| p.axis == axis)
    }
}
