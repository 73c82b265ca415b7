//! The exchange API: declare exchanges and queues, bind them, delete them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::pattern::TopicPattern;

/// Longest queue or exchange name accepted, in bytes (AMQP's short-string limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Check a queue, exchange or topic name: non-empty, bounded, no control characters or spaces.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_input(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid_input(format!(
            "{what} name is {} bytes; at most {MAX_NAME_BYTES} are allowed",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid_input(format!(
            "{what} name {name:?} contains {c:?}; use letters, digits and . _ - :"
        )));
    }
    Ok(())
}

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// To queues bound with exactly the message's routing key.
    Direct,
    /// To queues whose binding pattern matches the routing key (AMQP topic rules).
    Topic,
    /// To every bound queue.
    Fanout,
    /// To queues whose header match (all / any) the message's headers satisfy.
    Headers,
}

impl ExchangeKind {
    /// Every kind, for tests and reports.
    pub const ALL: [ExchangeKind; 4] = [
        ExchangeKind::Direct,
        ExchangeKind::Topic,
        ExchangeKind::Fanout,
        ExchangeKind::Headers,
    ];

    /// The AMQP name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exchange to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Whether it survives a broker restart (where the broker persists anything).
    pub durable: bool,
}

impl ExchangeSpec {
    /// A durable exchange of `kind`.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        ExchangeSpec {
            name: name.into(),
            kind,
            durable: true,
        }
    }

    /// Check the name.
    pub fn validate(&self) -> Result<()> {
        validate_name("exchange", &self.name)
    }
}

/// What a bounded queue does when it is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Sends wait until there is room (backpressure reaches the producer).
    #[default]
    Backpressure,
    /// Sends fail at once with [`ErrorKind::QueueFull`](crate::ErrorKind::QueueFull).
    Reject,
}

/// A queue to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Most messages it holds (ready, not yet delivered); `None` for unbounded.
    pub max_length: Option<u64>,
    /// What a send does when `max_length` is reached.
    pub overflow: Overflow,
    /// Messages older than this are expired (dead-lettered when a target is set).
    pub message_ttl: Option<Duration>,
    /// The queue that receives dead-lettered messages.
    pub dead_letter_queue: Option<String>,
    /// After this many delivery attempts a nack-requeue dead-letters instead.
    pub max_delivery_attempts: Option<u32>,
    /// Partitions, for brokers that partition a queue (Kafka); others ignore it.
    pub partitions: Option<u32>,
    /// Backend-specific settings passed through as they are (e.g. `x-queue-type`).
    pub extra: BTreeMap<String, String>,
}

impl QueueSpec {
    /// A durable, unbounded queue.
    pub fn new(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            durable: true,
            max_length: None,
            overflow: Overflow::Backpressure,
            message_ttl: None,
            dead_letter_queue: None,
            max_delivery_attempts: None,
            partitions: None,
            extra: BTreeMap::new(),
        }
    }

    /// Set durability.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Bound the queue.
    pub fn max_length(mut self, max: u64, overflow: Overflow) -> Self {
        self.max_length = Some(max);
        self.overflow = overflow;
        self
    }

    /// Expire messages after `ttl`.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// Dead-letter into `queue`.
    pub fn dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(queue.into());
        self
    }

    /// Dead-letter after `attempts` deliveries.
    pub fn max_delivery_attempts(mut self, attempts: u32) -> Self {
        self.max_delivery_attempts = Some(attempts);
        self
    }

    /// Partition the queue (where the broker partitions).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Pass a backend-specific setting through.
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Check names and limits.
    pub fn validate(&self) -> Result<()> {
        validate_name("queue", &self.name)?;
        if let Some(dlq) = &self.dead_letter_queue {
            validate_name("dead-letter queue", dlq)?;
            if *dlq == self.name {
                return Err(Error::invalid_input(format!(
                    "queue '{}' cannot be its own dead-letter queue",
                    self.name
                )));
            }
        }
        if self.max_length == Some(0) {
            return Err(Error::invalid_input(format!(
                "queue '{}' max_length must be at least 1",
                self.name
            )));
        }
        if self.max_delivery_attempts == Some(0) {
            return Err(Error::invalid_input(format!(
                "queue '{}' max_delivery_attempts must be at least 1",
                self.name
            )));
        }
        if self.partitions == Some(0) {
            return Err(Error::invalid_input(format!(
                "queue '{}' partitions must be at least 1",
                self.name
            )));
        }
        if self.message_ttl == Some(Duration::ZERO) {
            return Err(Error::invalid_input(format!(
                "queue '{}' message_ttl must be above zero",
                self.name
            )));
        }
        Ok(())
    }
}

/// Whether all or any of a headers binding's pairs must match (AMQP `x-match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMatch {
    /// Every pair must be present with that value.
    All,
    /// At least one pair must be present with that value.
    Any,
}

/// The rule a binding routes by; which one applies depends on the exchange kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A direct exchange's exact routing key.
    Key(String),
    /// A topic exchange's pattern.
    Pattern(TopicPattern),
    /// A fanout exchange's binding: everything.
    All,
    /// A headers exchange's match.
    Headers {
        /// All or any.
        mode: HeaderMatch,
        /// Name/value pairs to match.
        headers: Vec<(String, String)>,
    },
}

impl Route {
    /// Whether this rule suits an exchange of `kind`.
    pub fn fits(&self, kind: ExchangeKind) -> bool {
        matches!(
            (self, kind),
            (Route::Key(_), ExchangeKind::Direct)
                | (Route::Pattern(_), ExchangeKind::Topic)
                | (Route::All, ExchangeKind::Fanout)
                | (Route::Headers { .. }, ExchangeKind::Headers)
        )
    }

    /// Whether a message with this routing key and these headers takes this route.
    pub fn matches(&self, routing_key: &str, headers: &crate::Headers) -> bool {
        match self {
            Route::Key(key) => key == routing_key,
            Route::Pattern(pattern) => pattern.matches(routing_key),
            Route::All => true,
            Route::Headers {
                mode,
                headers: want,
            } => {
                let hit = |(n, v): &(String, String)| headers.get(n) == Some(v.as_str());
                match mode {
                    HeaderMatch::All => want.iter().all(hit),
                    HeaderMatch::Any => want.iter().any(hit),
                }
            }
        }
    }
}

/// A queue bound to an exchange by a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The exchange.
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// The rule.
    pub route: Route,
}

impl Binding {
    /// Bind with an exact routing key (direct exchange).
    pub fn key(
        exchange: impl Into<String>,
        queue: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            route: Route::Key(key.into()),
        }
    }

    /// Bind with a topic pattern, validated (topic exchange).
    pub fn pattern(
        exchange: impl Into<String>,
        queue: impl Into<String>,
        pattern: &str,
    ) -> Result<Self> {
        Ok(Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            route: Route::Pattern(TopicPattern::parse(pattern)?),
        })
    }

    /// Bind to everything (fanout exchange).
    pub fn fanout(exchange: impl Into<String>, queue: impl Into<String>) -> Self {
        Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            route: Route::All,
        }
    }

    /// Bind on header values (headers exchange).
    pub fn headers<K: Into<String>, V: Into<String>>(
        exchange: impl Into<String>,
        queue: impl Into<String>,
        mode: HeaderMatch,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            route: Route::Headers {
                mode,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            },
        }
    }

    /// Check names and the route's own rules.
    pub fn validate(&self) -> Result<()> {
        validate_name("exchange", &self.exchange)?;
        validate_name("queue", &self.queue)?;
        if let Route::Headers { headers, .. } = &self.route {
            if headers.is_empty() {
                return Err(Error::invalid_input(format!(
                    "headers binding of queue '{}' to '{}' has no headers to match",
                    self.queue, self.exchange
                )));
            }
            for (name, value) in headers {
                crate::Headers::validate_name(name)?;
                crate::Headers::validate_value(name, value)?;
            }
        }
        Ok(())
    }
}

/// Declares and removes exchanges, queues and bindings.
///
/// Declarations are idempotent: declaring what already exists with the same properties succeeds;
/// with different properties it is an [`ErrorKind::Conflict`](crate::ErrorKind::Conflict).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Topology: Send + Sync {
    /// Declare an exchange (`Unsupported` if the backend lacks that kind).
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()>;
    /// Delete an exchange and its bindings.
    async fn delete_exchange(&self, name: &str) -> Result<()>;
    /// Declare a queue.
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()>;
    /// Delete a queue and the messages in it.
    async fn delete_queue(&self, name: &str) -> Result<()>;
    /// Bind a queue to an exchange.
    async fn bind(&self, binding: &Binding) -> Result<()>;
    /// Remove a binding.
    async fn unbind(&self, binding: &Binding) -> Result<()>;

    /// How many messages wait in `queue` to be delivered, as the broker tells it, or `None`
    /// where this backend cannot tell (the default).
    ///
    /// The figure is the broker's: ready messages on RabbitMQ and the memory broker, the
    /// approximate count of visible messages on SQS, and on Kafka the consumer lag of the
    /// queue's group (its committed offsets behind the ends of its topic's partitions).
    /// Messages delivered and not yet settled are not counted.
    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        let _ = queue;
        Ok(None)
    }
}
