//! Peers: another Rust queue library driven through the same harness, on the same broker, in
//! the same run, as a second baseline beside the raw client and mailroom. `peer+URL` selects
//! it (`peer+memory://`, `peer+amqp://...`, `peer+sqs://...`); the only peer so far is
//! omniqueue ([`crate::peer_omniqueue`], cargo feature `peers`, off by default).
//!
//! A peer's semantics are not mailroom's: what its send waits for and how it acks are stated
//! in its driver's version string, which the report prints beside its figure.

use std::sync::Arc;

use async_trait::async_trait;

use mailroom_core::{Error, Result};

use crate::compare::RunOutcome;
use crate::driver::{Driver, DriverConsumer, DriverProducer, MailroomDriver, TopicPlan};
use crate::raw::RawClient;
use crate::result::BaselineRatio;
use crate::runner::{self, RunOptions};
use crate::workload::Plan;

/// The prefix that selects a peer library instead of the mailroom backend for a URL.
pub const PEER_PREFIX: &str = "peer+";

/// Bytes at the start of a peer's payload that carry the intended send time (20 decimal
/// digits): the peers' send takes a payload and nothing else.
pub const STAMP_BYTES: usize = 20;

/// Write the intended send time into the payload's first [`STAMP_BYTES`] bytes.
pub fn stamp(payload: &[u8], intended_us: u64) -> Vec<u8> {
    let mut body = payload.to_vec();
    let digits = format!("{intended_us:020}");
    let n = STAMP_BYTES.min(body.len());
    body[..n].copy_from_slice(&digits.as_bytes()[..n]);
    body
}

/// Read the intended send time back from a stamped payload.
pub fn read_stamp(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body.get(..STAMP_BYTES)?)
        .ok()?
        .parse()
        .ok()
}

/// A peer library's client with the mailroom backend of the same URL for topology and checks
/// (setting up is not measured; it guarantees the same queues, declared the same way).
pub struct PeerDriver<C> {
    topology: MailroomDriver,
    client: C,
}

impl<C: RawClient> PeerDriver<C> {
    /// Drive `client`, setting up topics through `topology`.
    pub fn new(topology: MailroomDriver, client: C) -> Self {
        PeerDriver { topology, client }
    }
}

#[async_trait]
impl<C: RawClient> Driver for PeerDriver<C> {
    fn delivers_in_order(&self) -> bool {
        self.topology.delivers_in_order()
    }

    fn name(&self) -> String {
        self.client.name()
    }

    async fn server_version(&self) -> String {
        format!(
            "{} (peer {})",
            self.topology.server_version().await,
            self.client.library()
        )
    }

    fn check(&self, plan: &Plan) -> Result<()> {
        self.topology.check(plan)?;
        if plan.message_size() < STAMP_BYTES {
            return Err(Error::unsupported(format!(
                "workload {}: field `messageSize` cannot be expressed on {}: the send time rides in the payload's first {STAMP_BYTES} bytes",
                plan.source,
                self.client.name()
            )));
        }
        Ok(())
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

/// The peer for a backend URL, when this build has one (feature `peers`, and the backend's
/// own feature for RabbitMQ and SQS).
pub async fn peer_for(url: &str) -> Result<Option<Arc<dyn Driver>>> {
    #[cfg(feature = "peers")]
    {
        crate::peer_omniqueue::connect(url).await
    }
    #[cfg(not(feature = "peers"))]
    {
        let _ = url;
        Ok(None)
    }
}

/// Run the peer for `url` on each max-rate plan, beside the backend's runs: each peer outcome
/// goes to `peer_runs`, and the backend's result of the same workload gets the ratio.
pub async fn run_peers(
    url: &str,
    plans: &[Plan],
    options: &RunOptions,
    runs: &mut [RunOutcome],
    peer_runs: &mut Vec<RunOutcome>,
) {
    if !plans.iter().any(|p| p.rate.is_none()) {
        return;
    }
    let peer = match peer_for(url).await {
        Ok(Some(peer)) => peer,
        Ok(None) => return,
        Err(e) => {
            eprintln!("  the peer for {url} could not be opened: {e}");
            return;
        }
    };
    for plan in plans.iter().filter(|p| p.rate.is_none()) {
        let name = plan.workload.name.clone();
        if let Err(e) = peer.check(plan) {
            peer_runs.push(RunOutcome::NotExpressible {
                workload: name,
                reason: e.message().to_owned(),
            });
            continue;
        }
        eprintln!("  {name} on {} ...", peer.name());
        let peer_options = RunOptions {
            url: peer.name(),
            ..options.clone()
        };
        let outcome = match runner::run(peer.clone(), plan, &peer_options).await {
            Ok(r) => RunOutcome::Done(Box::new(r)),
            Err(e) => {
                eprintln!("  {name} on {} failed: {e}", peer.name());
                RunOutcome::Failed {
                    workload: name.clone(),
                    error: e.to_string(),
                }
            }
        };
        if let RunOutcome::Done(p) = &outcome {
            for run in runs.iter_mut() {
                if let RunOutcome::Done(r) = run {
                    if r.workload == name {
                        let ratio = BaselineRatio::of(r, p);
                        eprintln!(
                            "  {}",
                            ratio.line(&r.driver, &r.workload).replacen(
                                "mailroom vs raw",
                                "mailroom vs peer",
                                1
                            )
                        );
                        r.mailroom.peer = Some(ratio);
                    }
                }
            }
        }
        peer_runs.push(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_survives_the_payload() {
        let body = stamp(&[b'm'; 100], 1_234_567);
        assert_eq!(body.len(), 100);
        assert_eq!(read_stamp(&body), Some(1_234_567));
        assert_eq!(&body[STAMP_BYTES..], &[b'm'; 80][..]);
        assert_eq!(read_stamp(b"short"), None);
    }
}
