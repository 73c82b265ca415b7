//! Delivery guarantees: how much a producer waits to hear from the broker before it calls a send
//! done, and the set of them a backend offers.
//!
//! A weaker guarantee buys throughput by giving up the news of a loss: with
//! [`DeliveryGuarantee::Unconfirmed`] a message the broker drops (a full queue, a lost
//! connection, a crash before it was written) is lost without an error, which is what
//! at-most-once means. Metrics and logs often accept that; orders and payments do not, hence
//! [`DeliveryGuarantee::Confirmed`] is every backend's default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How much a send waits for before its [`Receipt`](crate::Receipt) is given.
///
/// | level | RabbitMQ | Kafka | SQS | memory |
/// |---|---|---|---|---|
/// | `confirmed` (default) | publisher confirm | `acks=all` (idempotent) | the API call succeeded | enqueued |
/// | `leader_confirmed` | — | `acks=1` | — | — |
/// | `unconfirmed` | confirms off: written to the socket | `acks=0` | — | — |
///
/// A backend refuses a level it does not offer with an
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) error naming it (see
/// [`Capabilities::delivery_guarantees`](crate::Capabilities::delivery_guarantees)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryGuarantee {
    /// The broker has taken responsibility for the message, as far as it promises anything:
    /// the receipt means it is in every queue it routes to (memory), the broker sent a publisher
    /// confirm (RabbitMQ), every in-sync replica has it (Kafka `acks=all`, idempotent, so a
    /// retry never writes it twice), or the API call returned success (SQS). A failure before
    /// that returns the message inside the error. Costs a broker round trip per send (pipelined
    /// within the producer's window).
    #[default]
    Confirmed,
    /// The partition leader wrote the message to its log, its replicas may not have yet
    /// (Kafka `acks=1`, not idempotent). The receipt carries the offset; a leader that fails
    /// before replicating loses the message after the receipt, and a retried send may be
    /// written twice.
    LeaderConfirmed,
    /// The broker is not asked to answer (at most once): the receipt means only that the client
    /// wrote the message to its connection (RabbitMQ without publisher confirms) or to the
    /// socket (Kafka `acks=0`). It carries no offset, and says nothing about whether the broker
    /// has the message: one refused, unroutable, or lost with the connection is gone without an
    /// error. Saves the broker's answer and the wait for it.
    Unconfirmed,
}

impl DeliveryGuarantee {
    /// Every level, strongest first.
    pub const ALL: [DeliveryGuarantee; 3] = [
        DeliveryGuarantee::Confirmed,
        DeliveryGuarantee::LeaderConfirmed,
        DeliveryGuarantee::Unconfirmed,
    ];

    /// Its name in URLs (`?guarantee=unconfirmed`), reports and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryGuarantee::Confirmed => "confirmed",
            DeliveryGuarantee::LeaderConfirmed => "leader_confirmed",
            DeliveryGuarantee::Unconfirmed => "unconfirmed",
        }
    }

    /// Whether a receipt under this level means the broker answered for the message.
    pub fn broker_answers(self) -> bool {
        !matches!(self, DeliveryGuarantee::Unconfirmed)
    }

    fn bit(self) -> u8 {
        match self {
            DeliveryGuarantee::Confirmed => 1,
            DeliveryGuarantee::LeaderConfirmed => 2,
            DeliveryGuarantee::Unconfirmed => 4,
        }
    }

    /// Parse a URL value and check the backend offers it: an unknown name is a `Config` error
    /// listing the names, a known level the backend does not offer is `Unsupported` naming it
    /// and what the backend offers.
    pub fn parse_offered(
        value: &str,
        offered: DeliveryGuarantees,
        backend: &'static str,
    ) -> Result<Self> {
        let level: DeliveryGuarantee = value.parse().map_err(|e: Error| e.with_backend(backend))?;
        offered.require(level, backend, crate::operation::PRODUCER)?;
        Ok(level)
    }
}

impl fmt::Display for DeliveryGuarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryGuarantee {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        DeliveryGuarantee::ALL
            .into_iter()
            .find(|g| g.as_str() == name)
            .ok_or_else(|| {
                Error::config(format!(
                    "unknown delivery guarantee {name:?}; expected confirmed, leader_confirmed \
                     or unconfirmed"
                ))
            })
    }
}

/// The delivery guarantees a backend offers; [`DeliveryGuarantee::Confirmed`] always among them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryGuarantees(u8);

impl DeliveryGuarantees {
    /// Only [`DeliveryGuarantee::Confirmed`] (memory, SQS).
    pub const CONFIRMED_ONLY: DeliveryGuarantees = DeliveryGuarantees(1);

    /// These levels and [`DeliveryGuarantee::Confirmed`].
    pub fn of(levels: &[DeliveryGuarantee]) -> Self {
        levels
            .iter()
            .fold(Self::CONFIRMED_ONLY, |set, g| set.with(*g))
    }

    /// The set with `level` added.
    pub fn with(self, level: DeliveryGuarantee) -> Self {
        DeliveryGuarantees(self.0 | level.bit())
    }

    /// Whether `level` is offered.
    pub fn contains(self, level: DeliveryGuarantee) -> bool {
        self.0 & level.bit() != 0
    }

    /// The offered levels, strongest first.
    pub fn iter(self) -> impl Iterator<Item = DeliveryGuarantee> {
        DeliveryGuarantee::ALL
            .into_iter()
            .filter(move |g| self.contains(*g))
    }

    /// `Ok` when `level` is offered, else an `Unsupported` error naming it and what is offered.
    pub fn require(
        self,
        level: DeliveryGuarantee,
        backend: &'static str,
        operation: &'static str,
    ) -> Result<()> {
        if self.contains(level) {
            return Ok(());
        }
        Err(Error::unsupported(format!(
            "backend '{backend}' does not offer the delivery guarantee '{level}'; it offers: {self}"
        ))
        .with_backend(backend)
        .with_operation(operation))
    }
}

impl Default for DeliveryGuarantees {
    fn default() -> Self {
        Self::CONFIRMED_ONLY
    }
}

impl fmt::Display for DeliveryGuarantees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(DeliveryGuarantee::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

impl fmt::Debug for DeliveryGuarantees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn names_round_trip_and_unknown_names_are_config_errors() {
        for level in DeliveryGuarantee::ALL {
            assert_eq!(level.as_str().parse::<DeliveryGuarantee>().unwrap(), level);
        }
        let e = "acks0".parse::<DeliveryGuarantee>().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("\"acks0\""), "{e}");
        assert_eq!(DeliveryGuarantee::default(), DeliveryGuarantee::Confirmed);
    }

    #[test]
    fn confirmed_is_always_offered_and_others_only_when_declared() {
        let only = DeliveryGuarantees::default();
        assert!(only.contains(DeliveryGuarantee::Confirmed));
        assert!(!only.contains(DeliveryGuarantee::Unconfirmed));
        let rabbit = DeliveryGuarantees::of(&[DeliveryGuarantee::Unconfirmed]);
        assert_eq!(rabbit.to_string(), "confirmed, unconfirmed");
        let e = rabbit
            .require(DeliveryGuarantee::LeaderConfirmed, "demo", "producer")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("leader_confirmed"), "{e}");
        assert!(e.message().contains("confirmed, unconfirmed"), "{e}");
    }

    #[test]
    fn parse_offered_tells_a_typo_from_a_level_not_offered() {
        let only = DeliveryGuarantees::CONFIRMED_ONLY;
        let typo = DeliveryGuarantee::parse_offered("yes", only, "sqs").unwrap_err();
        assert_eq!(typo.kind(), ErrorKind::Config);
        assert_eq!(typo.backend(), Some("sqs"));
        let absent = DeliveryGuarantee::parse_offered("unconfirmed", only, "sqs").unwrap_err();
        assert_eq!(absent.kind(), ErrorKind::Unsupported);
        assert!(absent.message().contains("'unconfirmed'"), "{absent}");
        assert_eq!(
            DeliveryGuarantee::parse_offered("confirmed", only, "sqs").unwrap(),
            DeliveryGuarantee::Confirmed
        );
        assert!(!DeliveryGuarantee::Unconfirmed.broker_answers());
        assert!(DeliveryGuarantee::LeaderConfirmed.broker_answers());
    }
}
