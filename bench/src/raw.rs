//! Raw-client baselines: the same workload on the same broker through the client library the
//! backend is built on (lapin, rdkafka, aws-sdk-sqs) or, for memory://, a bare
//! `tokio::sync::mpsc`, so the abstraction's cost is a ratio measured in the same run.
//!
//! A raw driver sets up topics and subscriptions through the mailroom backend for the same URL
//! (that is not measured, and it guarantees the raw run uses the very queues, exchanges and
//! topics the backend run used, declared the same way) and checks workloads the same way; only
//! the measured path, sending with confirms and receiving with acks, goes straight through the
//! client library, configured as the backend configures it.
//!
//! By URL: `raw+amqp://...`, `raw+kafka://...`, `raw+sqs://...`, `raw+memory://` (each behind its
//! backend's cargo feature; see [`driver_for`]).

use std::sync::Arc;

use async_trait::async_trait;

use mailroom_core::{Destination, Error, Result};

use super::driver::{
    Driver, DriverConsumer, DriverProducer, MailroomDriver, RawMpscDriver, TopicPlan,
};
use super::workload::Plan;

/// The prefix that selects a raw baseline instead of the mailroom backend for a URL.
pub const RAW_PREFIX: &str = "raw+";

/// The raw part of a baseline: producers and consumers straight on the client library.
#[async_trait]
pub trait RawClient: Send + Sync {
    /// The driver's label in reports (`raw-lapin`, ...).
    fn name(&self) -> String;
    /// The client library and its version.
    fn library(&self) -> String;
    /// A producer sending to `destination` (a queue, or the topic's fanout exchange).
    async fn producer(&self, destination: &Destination) -> Result<Box<dyn DriverProducer>>;
    /// A consumer on one subscription of the topic.
    async fn consumer(
        &self,
        topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>>;
}

/// A raw client with the mailroom backend of the same URL for topology and workload checks.
pub struct RawDriver<C> {
    topology: MailroomDriver,
    client: C,
}

impl<C: RawClient> RawDriver<C> {
    /// Drive `client`, setting up topics through `topology`.
    pub fn new(topology: MailroomDriver, client: C) -> Self {
        RawDriver { topology, client }
    }
}

#[async_trait]
impl<C: RawClient> Driver for RawDriver<C> {
    fn delivers_in_order(&self) -> bool {
        self.topology.delivers_in_order()
    }

    fn name(&self) -> String {
        self.client.name()
    }

    async fn server_version(&self) -> String {
        format!(
            "{} (client {})",
            self.topology.server_version().await,
            self.client.library()
        )
    }

    fn check(&self, plan: &Plan) -> Result<()> {
        self.topology.check(plan)
    }

    async fn create(&self, topic: &TopicPlan) -> Result<()> {
        self.topology.create(topic).await
    }

    async fn producer(&self, topic: &TopicPlan) -> Result<Box<dyn DriverProducer>> {
        self.client
            .producer(&MailroomDriver::destination(topic))
            .await
    }

    async fn consumer(
        &self,
        topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>> {
        self.client.consumer(topic, subscription).await
    }

    async fn delete(&self, topic: &TopicPlan) -> Result<()> {
        self.topology.delete(topic).await
    }
}

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(s, _)| s)
}

/// The raw baseline for a backend URL, when this build has one: raw mpsc for `memory://`, raw
/// lapin for `amqp://` / `amqps://`, raw rdkafka for `kafka://`, raw aws-sdk-sqs for `sqs://`
/// (each with its backend's cargo feature). Connecting can fail like the backend's own connect.
pub async fn baseline_for(url: &str) -> Result<Option<Arc<dyn Driver>>> {
    Ok(match scheme(url) {
        "memory" | "mpsc" => Some(Arc::new(RawMpscDriver::new())),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => Some(Arc::new(super::raw_lapin::connect(url).await?)),
        #[cfg(feature = "kafka")]
        "kafka" => Some(Arc::new(super::raw_kafka::connect(url).await?)),
        #[cfg(feature = "sqs")]
        "sqs" => Some(Arc::new(super::raw_sqs::connect(url).await?)),
        _ => None,
    })
}

/// What the harness drives for a URL: `raw+URL` is the raw baseline for `URL`
/// ([`baseline_for`]), `peer+URL` a peer library ([`super::peers::peer_for`]), anything else
/// the mailroom backend ([`mailroom::connect`]).
pub async fn driver_for(url: &str) -> Result<Arc<dyn Driver>> {
    if let Some(inner) = url.strip_prefix(super::peers::PEER_PREFIX) {
        return super::peers::peer_for(inner).await?.ok_or_else(|| {
            Error::config(format!(
                "no peer for {}:// in this build (omniqueue peers: feature `peers`, for memory://, amqp:// and sqs:// with their features)",
                scheme(inner)
            ))
        });
    }
    let Some(inner) = url.strip_prefix(RAW_PREFIX) else {
        return Ok(Arc::new(MailroomDriver::new(mailroom::connect(url).await?)));
    };
    baseline_for(inner).await?.ok_or_else(|| {
        Error::config(format!(
            "no raw baseline for {}://, in this build: raw+memory:// always{}{}{}",
            scheme(inner),
            if cfg!(feature = "rabbitmq") {
                ", raw+amqp:// (feature rabbitmq)"
            } else {
                ""
            },
            if cfg!(feature = "kafka") {
                ", raw+kafka:// (feature kafka)"
            } else {
                ""
            },
            if cfg!(feature = "sqs") {
                ", raw+sqs:// (feature sqs)"
            } else {
                ""
            },
        ))
    })
}
