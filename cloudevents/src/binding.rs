//! Which header names carry CloudEvents attributes on each broker.
//!
//! The backends carry mailroom headers as they are (Kafka record headers, AMQP 0-9-1 header
//! table, SQS message attributes, memory), so a binding only has to pick the names: the
//! difference between brokers is a prefix, nothing else. One place knows the names; the
//! backends' codecs stay CloudEvents-free, except RabbitMQ's, which carries
//! [`CONTENT_TYPE_HEADER`] in the AMQP `content_type` property as the AMQP binding asks.

pub use mailroom_core::wire::CONTENT_TYPE_HEADER;

/// The spec attribute that travels as [`CONTENT_TYPE_HEADER`] instead of a prefixed header.
pub(crate) const DATACONTENTTYPE: &str = "datacontenttype";
/// The spec attribute that names the spec version; its header marks a binary-mode event.
pub(crate) const SPECVERSION: &str = "specversion";

/// A CloudEvents protocol binding: the header names an event's attributes get on one broker.
///
/// | binding | attribute `id` travels as | `datacontenttype` travels as | spec |
/// |---|---|---|---|
/// | [`Kafka`](Binding::Kafka) | `ce_id` record header | `content-type` header | Kafka protocol binding |
/// | [`Amqp`](Binding::Amqp) | `cloudEvents:id` header (application property) | AMQP `content_type` property | AMQP protocol binding |
/// | [`Sqs`](Binding::Sqs) | `ce_id` message attribute | `content-type` attribute | none exists; Kafka's names |
/// | [`Memory`](Binding::Memory) | `ce_id` header | `content-type` header | none; Kafka's names |
///
/// SQS and memory use Kafka's names so that a pipeline bridging Kafka, SQS and memory carries an
/// event's headers unchanged; only an AMQP hop needs [`crate::EventCodec::rebind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Binding {
    /// Apache Kafka: `ce_` headers (CloudEvents Kafka protocol binding 1.0).
    Kafka,
    /// RabbitMQ (AMQP 0-9-1): `cloudEvents:` headers (CloudEvents AMQP protocol binding 1.0;
    /// RabbitMQ maps the 0-9-1 header table to AMQP 1.0 application properties). `cloudEvents_`,
    /// the spelling for clients whose property names cannot hold `:` (JMS), is read too.
    Amqp,
    /// Amazon SQS: `ce_` message attributes (no CloudEvents binding exists for SQS).
    Sqs,
    /// The in-memory broker: `ce_` headers.
    Memory,
}

impl Binding {
    /// The binding for a backend, by its name (`Backend::name()`: `kafka`, `rabbitmq`, `sqs`,
    /// `memory`); `None` for a backend this crate does not know.
    pub fn for_backend(name: &str) -> Option<Binding> {
        Some(match name {
            "kafka" => Binding::Kafka,
            "rabbitmq" => Binding::Amqp,
            "sqs" => Binding::Sqs,
            "memory" => Binding::Memory,
            _ => return None,
        })
    }

    /// The prefix written before an attribute's name: `ce_` or `cloudEvents:`.
    pub fn prefix(self) -> &'static str {
        match self {
            Binding::Amqp => "cloudEvents:",
            Binding::Kafka | Binding::Sqs | Binding::Memory => "ce_",
        }
    }

    /// Every prefix read back: the written one first.
    pub(crate) fn read_prefixes(self) -> &'static [&'static str] {
        match self {
            Binding::Amqp => &["cloudEvents:", "cloudEvents_"],
            Binding::Kafka | Binding::Sqs | Binding::Memory => &["ce_"],
        }
    }

    /// The header an attribute (or extension) is written under on this binding.
    pub fn header_name(self, attribute: &str) -> String {
        if attribute == DATACONTENTTYPE {
            CONTENT_TYPE_HEADER.to_owned()
        } else {
            [self.prefix(), attribute].concat()
        }
    }

    /// The attribute a received header carries, if it carries one.
    pub(crate) fn attribute_of(self, header: &str) -> Option<&str> {
        if header == CONTENT_TYPE_HEADER {
            return Some(DATACONTENTTYPE);
        }
        self.read_prefixes()
            .iter()
            .find_map(|p| header.strip_prefix(p))
            .filter(|name| !name.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_each_binding() {
        assert_eq!(Binding::Kafka.header_name("id"), "ce_id");
        assert_eq!(Binding::Amqp.header_name("time"), "cloudEvents:time");
        assert_eq!(Binding::Sqs.header_name("type"), "ce_type");
        assert_eq!(Binding::Amqp.header_name("datacontenttype"), "content-type");
        assert_eq!(Binding::Amqp.attribute_of("cloudEvents_id"), Some("id"));
        assert_eq!(Binding::Kafka.attribute_of("cloudEvents:id"), None);
        assert_eq!(Binding::Kafka.attribute_of("ce_"), None);
        assert_eq!(Binding::Kafka.attribute_of("traceparent"), None);
        assert_eq!(Binding::for_backend("rabbitmq"), Some(Binding::Amqp));
        assert_eq!(Binding::for_backend("nats"), None);
    }
}
