//! What a backend can do, declared up front so that absent features fail before any I/O.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::guarantee::{DeliveryGuarantee, DeliveryGuarantees};
use crate::topology::ExchangeKind;

/// One flat declaration of what a backend supports.
///
/// Backends start from [`Capabilities::default`] (nothing supported) and switch on what they
/// implement; the conformance suite runs a case only when every capability it needs is on, and
/// asking a backend for an absent capability is an [`ErrorKind::Unsupported`](crate::ErrorKind)
/// error raised before any network call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages with the same key are delivered in send order (to a single consumer).
    pub per_key_ordering: bool,
    /// Several consumers on one queue share its messages, each delivered to one of them.
    pub competing_consumers: bool,
    /// A consumer can start again from an earlier position (offsets, timestamps).
    pub replay: bool,
    /// Messages can be held back by a per-message delay, and nacks can requeue after a delay.
    pub delayed_delivery: bool,
    /// The longest delay accepted, when `delayed_delivery` is on and the broker bounds it.
    pub max_delay: Option<Duration>,
    /// Direct exchanges route on an exact routing key.
    pub exchange_direct: bool,
    /// Topic exchanges route on AMQP patterns (`*` one word, `#` zero or more).
    pub exchange_topic: bool,
    /// Fanout exchanges copy every message to every bound queue.
    pub exchange_fanout: bool,
    /// Headers exchanges route on header matches (all / any).
    pub exchange_headers: bool,
    /// Nacked or expired messages can go to a dead-letter queue.
    pub dead_letter: bool,
    /// A queue can dead-letter a message after a maximum number of delivery attempts.
    pub max_delivery_attempts: bool,
    /// Deliveries report how many times they have been attempted.
    pub attempt_count: bool,
    /// Queues can be bounded by a maximum length.
    pub max_queue_length: bool,
    /// Queues can expire messages after a time to live.
    pub message_ttl: bool,
    /// A batch send is cheaper than the same sends one by one.
    pub batch_send: bool,
    /// Consume-then-produce can be committed atomically
    /// ([`Backend::transactional`](crate::Backend::transactional)).
    pub transactions: bool,
    /// Messages survive a broker restart (in the configuration this backend was opened with).
    pub persistence: bool,
    /// An unsettled delivery whose consumer goes away is delivered again.
    pub redelivery_on_drop: bool,
    /// A queue can be split into partitions: [`QueueSpec::partitions`](crate::QueueSpec) is
    /// honoured, each partition keeps its own order, and the message key picks the partition.
    /// Backends without it ignore the partition count (one queue, one order).
    pub partitioned_queues: bool,
    /// A message may carry one header name more than once ([`Headers::append`](crate::Headers)),
    /// and it arrives with every value in order. Without it a send of such a message is an
    /// `Unsupported` error before any I/O.
    pub repeated_header_names: bool,
    /// Largest message (payload, key and headers) accepted, in bytes.
    pub max_message_size: Option<usize>,
    /// Largest number of messages one batch call sends at once (the backend splits larger ones).
    pub max_batch_size: Option<usize>,
    /// Most headers one message may carry.
    pub max_headers: Option<usize>,
    /// The delivery guarantees a producer can be opened with
    /// ([`ProducerOptions::guarantee`](crate::ProducerOptions), or the URL's `?guarantee=`);
    /// [`DeliveryGuarantee::Confirmed`] is always among them and is the default.
    pub delivery_guarantees: DeliveryGuarantees,
    /// The supported capabilities this backend implements in the client rather than in the
    /// broker (see [`Implementation`]); every other supported capability is native.
    pub client_side: ClientSide,
}

/// How a supported capability is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Implementation {
    /// The broker does it: a message that does not concern a consumer never reaches it.
    Native,
    /// The client library does it over what the broker offers, at a cost the broker would not
    /// pay (e.g. every subscriber of a Kafka topic exchange reads the whole topic and drops
    /// what its bindings do not match).
    ClientSide,
}

impl Implementation {
    /// `native` or `client-side`, as printed in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Implementation::Native => "native",
            Implementation::ClientSide => "client-side",
        }
    }
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The capabilities a backend declares as implemented client-side ([`Capabilities::client_side`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSide(Vec<Capability>);

impl ClientSide {
    /// These capabilities, client-side.
    pub fn of(capabilities: &[Capability]) -> Self {
        let mut set = Vec::with_capacity(capabilities.len());
        for c in capabilities {
            if !set.contains(c) {
                set.push(*c);
            }
        }
        ClientSide(set)
    }

    /// Whether `capability` is among them.
    pub fn contains(&self, capability: Capability) -> bool {
        self.0.contains(&capability)
    }

    /// The capabilities, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}

/// A single capability, to gate a test or name a missing feature in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Capability {
    PerKeyOrdering,
    CompetingConsumers,
    Replay,
    DelayedDelivery,
    Exchange(ExchangeKind),
    DeadLetter,
    MaxDeliveryAttempts,
    AttemptCount,
    MaxQueueLength,
    MessageTtl,
    BatchSend,
    Transactions,
    Persistence,
    RedeliveryOnDrop,
    PartitionedQueues,
    RepeatedHeaderNames,
    MaxMessageSize,
    DeliveryGuarantee(DeliveryGuarantee),
}

impl Capability {
    /// The field name in [`Capabilities`], as printed in skip reports and errors.
    pub fn name(self) -> &'static str {
        match self {
            Capability::PerKeyOrdering => "per_key_ordering",
            Capability::CompetingConsumers => "competing_consumers",
            Capability::Replay => "replay",
            Capability::DelayedDelivery => "delayed_delivery",
            Capability::Exchange(ExchangeKind::Direct) => "exchange_direct",
            Capability::Exchange(ExchangeKind::Topic) => "exchange_topic",
            Capability::Exchange(ExchangeKind::Fanout) => "exchange_fanout",
            Capability::Exchange(ExchangeKind::Headers) => "exchange_headers",
            Capability::DeadLetter => "dead_letter",
            Capability::MaxDeliveryAttempts => "max_delivery_attempts",
            Capability::AttemptCount => "attempt_count",
            Capability::MaxQueueLength => "max_queue_length",
            Capability::MessageTtl => "message_ttl",
            Capability::BatchSend => "batch_send",
            Capability::Transactions => "transactions",
            Capability::Persistence => "persistence",
            Capability::RedeliveryOnDrop => "redelivery_on_drop",
            Capability::PartitionedQueues => "partitioned_queues",
            Capability::RepeatedHeaderNames => "repeated_header_names",
            Capability::MaxMessageSize => "max_message_size",
            Capability::DeliveryGuarantee(DeliveryGuarantee::Confirmed) => {
                "delivery_guarantee_confirmed"
            }
            Capability::DeliveryGuarantee(DeliveryGuarantee::LeaderConfirmed) => {
                "delivery_guarantee_leader_confirmed"
            }
            Capability::DeliveryGuarantee(DeliveryGuarantee::Unconfirmed) => {
                "delivery_guarantee_unconfirmed"
            }
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Capabilities {
    /// Whether one capability is on.
    pub fn supports(&self, capability: Capability) -> bool {
        match capability {
            Capability::PerKeyOrdering => self.per_key_ordering,
            Capability::CompetingConsumers => self.competing_consumers,
            Capability::Replay => self.replay,
            Capability::DelayedDelivery => self.delayed_delivery,
            Capability::Exchange(ExchangeKind::Direct) => self.exchange_direct,
            Capability::Exchange(ExchangeKind::Topic) => self.exchange_topic,
            Capability::Exchange(ExchangeKind::Fanout) => self.exchange_fanout,
            Capability::Exchange(ExchangeKind::Headers) => self.exchange_headers,
            Capability::DeadLetter => self.dead_letter,
            Capability::MaxDeliveryAttempts => self.max_delivery_attempts,
            Capability::AttemptCount => self.attempt_count,
            Capability::MaxQueueLength => self.max_queue_length,
            Capability::MessageTtl => self.message_ttl,
            Capability::BatchSend => self.batch_send,
            Capability::Transactions => self.transactions,
            Capability::Persistence => self.persistence,
            Capability::RedeliveryOnDrop => self.redelivery_on_drop,
            Capability::PartitionedQueues => self.partitioned_queues,
            Capability::RepeatedHeaderNames => self.repeated_header_names,
            Capability::MaxMessageSize => self.max_message_size.is_some(),
            Capability::DeliveryGuarantee(level) => self.delivery_guarantees.contains(level),
        }
    }

    /// How `capability` is implemented, or `None` when it is not supported.
    pub fn implementation(&self, capability: Capability) -> Option<Implementation> {
        if !self.supports(capability) {
            None
        } else if self.client_side.contains(capability) {
            Some(Implementation::ClientSide)
        } else {
            Some(Implementation::Native)
        }
    }

    /// `Ok` when `capability` is on, else an `Unsupported` error naming it and the operation.
    pub fn require(
        &self,
        capability: Capability,
        backend: &'static str,
        operation: &'static str,
    ) -> Result<()> {
        if self.supports(capability) {
            Ok(())
        } else {
            Err(Error::unsupported(format!(
                "backend '{backend}' does not support {capability} (declared in its capabilities)"
            ))
            .with_backend(backend)
            .with_operation(operation))
        }
    }

    /// Check a message against the declared size, header-count and delay limits.
    pub fn check_message(
        &self,
        message: &crate::Message,
        backend: &'static str,
        operation: &'static str,
    ) -> Result<()> {
        let ctx = |e: Error| e.with_backend(backend).with_operation(operation);
        if let Some(max) = self.max_message_size {
            let len = message.encoded_len();
            if len > max {
                return Err(ctx(Error::new(
                    crate::ErrorKind::PayloadTooLarge,
                    format!(
                        "message {} is {len} bytes (payload {} + key + headers); {backend} accepts at most {max}",
                        message.id(),
                        message.payload().len()
                    ),
                )));
            }
        }
        if let Some(max) = self.max_headers {
            if message.headers().len() > max {
                return Err(ctx(Error::invalid_input(format!(
                    "message {} has {} headers; {backend} accepts at most {max}",
                    message.id(),
                    message.headers().len()
                ))));
            }
        }
        if !self.repeated_header_names {
            if let Some(name) = message.headers().first_repeated_name() {
                return Err(ctx(Error::unsupported(format!(
                    "message {} has header '{name}' more than once; {backend} does not support \
                     repeated_header_names (declared in its capabilities)",
                    message.id()
                ))));
            }
        }
        if let Some(delay) = message.delay() {
            self.require(Capability::DelayedDelivery, backend, operation)?;
            if let Some(max) = self.max_delay {
                if delay > max {
                    return Err(ctx(Error::invalid_input(format!(
                        "delay of {delay:?} exceeds {backend}'s maximum of {max:?}"
                    ))));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Message};

    #[test]
    fn absent_capability_is_unsupported_and_named() {
        let caps = Capabilities::default();
        let err = caps
            .require(Capability::Replay, "demo", "consume")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("replay"), "{err}");
    }

    #[test]
    fn implementation_is_native_unless_declared_client_side_and_none_when_absent() {
        let caps = Capabilities {
            exchange_topic: true,
            exchange_fanout: true,
            client_side: ClientSide::of(&[
                Capability::Exchange(ExchangeKind::Topic),
                Capability::Exchange(ExchangeKind::Headers),
            ]),
            ..Capabilities::default()
        };
        assert_eq!(
            caps.implementation(Capability::Exchange(ExchangeKind::Topic)),
            Some(Implementation::ClientSide)
        );
        assert_eq!(
            caps.implementation(Capability::Exchange(ExchangeKind::Fanout)),
            Some(Implementation::Native)
        );
        // Declared client-side but not supported: not supported wins.
        assert_eq!(
            caps.implementation(Capability::Exchange(ExchangeKind::Headers)),
            None
        );
        assert_eq!(caps.implementation(Capability::Replay), None);
        assert_eq!(Implementation::ClientSide.to_string(), "client-side");
    }

    #[test]
    fn oversize_message_is_payload_too_large() {
        let caps = Capabilities {
            max_message_size: Some(10),
            ..Capabilities::default()
        };
        let err = caps
            .check_message(&Message::new(vec![0u8; 11]), "demo", "send")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    }
}
