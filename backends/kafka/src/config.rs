//! Configuration of the Kafka backend, from code or from a `kafka://` URL.
//!
//! Every librdkafka property can be passed through ([`KafkaConfig::property`], or as a URL query
//! parameter with a dot in its name); the few settings mailroom itself reads are typed fields.
//! Secrets (`sasl.password`, `ssl.key.password`, ...) are never printed by `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mailroom_core::url::{percent_decode_user_info, query_pairs, redact, split_user_info};
use mailroom_core::{DeliveryGuarantee, Error, Result};
use rdkafka::ClientConfig;

use crate::BACKEND;

/// librdkafka's own default `message.max.bytes`, used when the property is not set.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Bytes of `message.max.bytes` kept back for the record and batch framing and for mailroom's own
/// headers (id, timestamp, attempt), so that a message that passes the pre-I/O size check is not
/// refused by librdkafka afterwards.
pub const FRAMING_RESERVE: usize = 512;
/// The longest a send waits for its delivery report, retries included (see
/// [`KafkaConfig::producer_client_config`]).
const PRODUCER_MESSAGE_TIMEOUT_MS: &str = "120000";
/// librdkafka's own `transaction.timeout.ms`, used when neither the unit nor the URL sets one.
const LIBRDKAFKA_TRANSACTION_TIMEOUT_MS: &str = "60000";
/// How long a consumer group waits for a silent member (see
/// [`KafkaConfig::consumer_client_config`]); brokers accept 6 s to 30 min by default.
const CONSUMER_SESSION_TIMEOUT_MS: &str = "10000";
/// A tenth of the session timeout (why: [`KafkaConfig::consumer_client_config`]).
const CONSUMER_HEARTBEAT_INTERVAL_MS: &str = "1000";
/// The longest a consumer's fetch waits on the broker for data: 100 ms, not librdkafka's 500
/// (why: [`KafkaConfig::consumer_client_config`]).
const CONSUMER_FETCH_WAIT_MAX_MS: &str = "100";
/// librdkafka's own default `queue.buffering.max.messages`.
const DEFAULT_QUEUE_BUFFERING_MAX_MESSAGES: usize = 100_000;

/// How the Kafka backend connects and behaves.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` of the bootstrap brokers.
    pub brokers: Vec<String>,
    /// librdkafka properties passed through as they are (`security.protocol`, `sasl.*`, `ssl.*`,
    /// `linger.ms`, `enable.idempotence` ...). They apply to every client the backend makes.
    pub properties: BTreeMap<String, String>,
    /// How long `connect` waits for the cluster's metadata before failing with `Connection`.
    pub connect_timeout: Duration,
    /// Bound of admin and metadata calls (create/delete topics, watermarks, commits on bind).
    pub operation_timeout: Duration,
    /// Partitions of a declared queue or exchange whose spec does not say.
    pub default_partitions: u32,
    /// Replication factor of declared topics.
    pub replication_factor: i32,
    /// Most unsettled deliveries one consumer holds when `ConsumerOptions::prefetch` is unset.
    pub default_prefetch: u32,
    /// Whether the broker keeps messages across a restart. Apache Kafka does; a Kafka-protocol
    /// broker on memory storage does not (`?persistent=false` declares that).
    pub persistent: bool,
    /// How a producer maps a key to a partition.
    pub partitioner: Partitioner,
    /// Whether the broker implements Kafka transactions. Apache Kafka does; a broker that does
    /// not (tansu 0.6) is declared with `?transactions=false`, so that `transactional` is
    /// `Unsupported` before any I/O instead of failing at the first commit.
    pub transactions: bool,
    /// What producers wait for, unless opened with another
    /// ([`ProducerOptions`](mailroom_core::ProducerOptions)); Kafka's `acks`:
    /// `confirmed` is `acks=all` with idempotence (the default), `leader_confirmed` is `acks=1`
    /// and `unconfirmed` is `acks=0`, both without idempotence, which needs `acks=all`.
    /// `?guarantee=leader_confirmed` or `?acks=1` (also `request.required.acks`). Requeues,
    /// dead-lettering and transactional units always send `confirmed`.
    pub guarantee: DeliveryGuarantee,
}

/// How a producer maps a record's key to a partition (librdkafka's `partitioner`).
///
/// The default is [`Partitioner::Murmur2Random`], the Java client's mapping: librdkafka's own
/// default (CRC32) puts most keys on other partitions than Java, Go (sarama's compat mode,
/// franz-go) and Python's kafka clients do, so a mailroom service and a Java service writing the
/// same topic would break each other's per-key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Partitioner {
    /// murmur2 of the key, as the Java client; records without a key go to a random partition.
    #[default]
    Murmur2Random,
    /// murmur2 of the key; records without a key all go to one partition.
    Murmur2,
    /// CRC32 of the key (librdkafka's default); records without a key to a random partition.
    ConsistentRandom,
    /// CRC32 of the key; records without a key all go to one partition.
    Consistent,
    /// FNV-1a of the key (Sarama's default); records without a key to a random partition.
    Fnv1aRandom,
    /// FNV-1a of the key; records without a key all go to one partition.
    Fnv1a,
    /// A random partition for every record, key or not (no per-key order).
    Random,
}

impl Partitioner {
    const ALL: [Partitioner; 7] = [
        Partitioner::Murmur2Random,
        Partitioner::Murmur2,
        Partitioner::ConsistentRandom,
        Partitioner::Consistent,
        Partitioner::Fnv1aRandom,
        Partitioner::Fnv1a,
        Partitioner::Random,
    ];

    /// librdkafka's name for it, as in `?partitioner=murmur2_random`.
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::Murmur2 => "murmur2",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Consistent => "consistent",
            Partitioner::Fnv1aRandom => "fnv1a_random",
            Partitioner::Fnv1a => "fnv1a",
            Partitioner::Random => "random",
        }
    }
}

impl std::str::FromStr for Partitioner {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Partitioner::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Partitioner::ALL.iter().map(|p| p.as_str()).collect();
                Error::config(format!(
                    "unknown kafka:// partitioner {name:?}; expected one of {}",
                    known.join(", ")
                ))
                .with_backend(BACKEND)
            })
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".to_owned()],
            properties: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            default_partitions: 3,
            replication_factor: 1,
            default_prefetch: 1_000,
            persistent: true,
            partitioner: Partitioner::default(),
            transactions: true,
            guarantee: DeliveryGuarantee::Confirmed,
        }
    }
}

/// Whether a librdkafka property holds a secret that must never be printed: the same names
/// [`redact`] hides in a URL's query.
pub fn is_secret(name: &str) -> bool {
    mailroom_core::url::is_secret_parameter(name)
}

impl KafkaConfig {
    /// A configuration for these bootstrap brokers (`host:port`).
    pub fn new<S: Into<String>>(brokers: impl IntoIterator<Item = S>) -> Self {
        KafkaConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            ..KafkaConfig::default()
        }
    }

    /// Pass a librdkafka property through.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Parse `kafka://[user:password@]host:port[,host:port][?name=value&...]`.
    ///
    /// Query names with a dot are librdkafka properties (`?security.protocol=SASL_SSL`); the
    /// others are mailroom settings: `connect_timeout_ms`, `operation_timeout_ms`, `partitions`,
    /// `replication_factor`, `prefetch`, `persistent`, `partitioner` ([`Partitioner`]'s names),
    /// `transactions` (`false` for a broker without them), `guarantee` ([`DeliveryGuarantee`]'s
    /// names) or its Kafka spelling `acks` (`all`/`-1`, `1`, `0`). A user and password become `sasl.username`
    /// and `sasl.password` (with `sasl.mechanism=PLAIN` and `security.protocol=SASL_PLAINTEXT`
    /// unless given: `?sasl.mechanism=SCRAM-SHA-512&security.protocol=SASL_SSL&ssl.ca.location=`
    /// for SCRAM over TLS; see the crate docs' TLS and SASL section).
    pub fn from_url(url: &str) -> Result<Self> {
        let shown = redact(url);
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            Error::config(format!(
                "kafka backend URL must start with kafka://, got {shown:?}"
            ))
            .with_backend(BACKEND)
        })?;
        let (userinfo, after) = split_user_info(url, rest)?;
        let hosts = after.split(['/', '?']).next().unwrap_or("");
        let mut config = KafkaConfig {
            brokers: Vec::new(),
            ..KafkaConfig::default()
        };
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let (name, port) = host.rsplit_once(':').ok_or_else(|| {
                Error::config(format!(
                    "broker {host:?} in {shown} has no port; expected host:port, e.g. 127.0.0.1:9092"
                ))
            })?;
            if name.is_empty() || port.parse::<u16>().is_err() {
                return Err(Error::config(format!(
                    "broker {host:?} in {shown} is not host:port with a port from 1 to 65535"
                ))
                .with_backend(BACKEND));
            }
            config.brokers.push(host.to_owned());
        }
        if config.brokers.is_empty() {
            return Err(Error::config(format!(
                "{shown} names no broker; expected kafka://host:port[,host:port]"
            ))
            .with_backend(BACKEND));
        }
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            config
                .properties
                .insert("sasl.username".into(), percent_decode_user_info(user, url)?);
            config.properties.insert(
                "sasl.password".into(),
                percent_decode_user_info(password, url)?,
            );
        }
        for (key, value) in query_pairs(url)? {
            let number = |what: &str| -> Result<u64> {
                value.parse().map_err(|_| {
                    Error::config(format!(
                        "kafka:// {what} must be a whole number, got {value:?}"
                    ))
                    .with_backend(BACKEND)
                })
            };
            match key.as_str() {
                "connect_timeout_ms" => {
                    config.connect_timeout = Duration::from_millis(number(&key)?)
                }
                "operation_timeout_ms" => {
                    config.operation_timeout = Duration::from_millis(number(&key)?)
                }
                "partitions" => config.default_partitions = positive(number(&key)?, &key)?,
                "replication_factor" => {
                    config.replication_factor = positive(number(&key)?, &key)? as i32
                }
                "prefetch" => config.default_prefetch = positive(number(&key)?, &key)?,
                "persistent" => {
                    config.persistent = value.parse().map_err(|_| {
                        Error::config(format!(
                            "kafka:// persistent must be true or false, got {value:?}"
                        ))
                        .with_backend(BACKEND)
                    })?
                }
                "partitioner" => config.partitioner = value.parse()?,
                "guarantee" => {
                    config.guarantee = DeliveryGuarantee::parse_offered(
                        &value,
                        crate::capabilities(&config).delivery_guarantees,
                        BACKEND,
                    )?
                }
                "acks" | "request.required.acks" => config.guarantee = guarantee_of_acks(&value)?,
                "transactions" => {
                    config.transactions = value.parse().map_err(|_| {
                        Error::config(format!(
                            "kafka:// transactions must be true or false, got {value:?}"
                        ))
                        .with_backend(BACKEND)
                    })?
                }
                // librdkafka's properties have a dot, except `debug` (its debug log contexts,
                // e.g. `cgrp,fetch`), which `client_config` also reads to turn its log level up.
                _ if key.contains('.') || key == "debug" => {
                    config.properties.insert(key, value);
                }
                other => {
                    return Err(Error::config(format!(
                        "unknown kafka:// parameter {other:?}; mailroom's are connect_timeout_ms, \
                         operation_timeout_ms, partitions, replication_factor, prefetch, \
                         persistent, partitioner, transactions, guarantee, acks, and librdkafka \
                         properties have a dot (e.g. linger.ms) or are `debug`"
                    ))
                    .with_backend(BACKEND))
                }
            }
        }
        if userinfo.is_some() {
            config
                .properties
                .entry("sasl.mechanism".into())
                .or_insert_with(|| "PLAIN".into());
            config
                .properties
                .entry("security.protocol".into())
                .or_insert_with(|| "SASL_PLAINTEXT".into());
        }
        config.check_guarantee(config.guarantee)?;
        Ok(config)
    }

    /// `Config` error when the librdkafka properties contradict `guarantee`: idempotence
    /// needs `acks=all`, so `enable.idempotence=true` with a weaker level is refused, and so is
    /// an `acks` property naming another level than `guarantee`.
    pub fn check_guarantee(&self, guarantee: DeliveryGuarantee) -> Result<()> {
        let idempotent = self
            .properties
            .get("enable.idempotence")
            .is_some_and(|v| v == "true");
        if idempotent && guarantee != DeliveryGuarantee::Confirmed {
            return Err(Error::config(format!(
                "kafka:// delivery guarantee {guarantee} ({}) contradicts \
                 enable.idempotence=true: idempotence needs acks=all (guarantee=confirmed)",
                acks_of(guarantee)
            ))
            .with_backend(BACKEND));
        }
        for name in ["acks", "request.required.acks"] {
            if let Some(value) = self.properties.get(name) {
                let level = guarantee_of_acks(value)?;
                if level != guarantee {
                    return Err(Error::config(format!(
                        "kafka:// property {name}={value} contradicts the delivery guarantee \
                         {guarantee} ({}); set one of them",
                        acks_of(guarantee)
                    ))
                    .with_backend(BACKEND));
                }
            }
        }
        Ok(())
    }

    /// The `bootstrap.servers` value.
    pub fn bootstrap_servers(&self) -> String {
        self.brokers.join(",")
    }

    /// `message.max.bytes` as configured (librdkafka's default if unset or unparsable; an
    /// unparsable value is reported by librdkafka itself when the first client is made).
    pub fn message_max_bytes(&self) -> usize {
        self.properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// Largest mailroom message (payload, key, headers) accepted before any I/O.
    pub fn max_message_size(&self) -> usize {
        self.message_max_bytes()
            .saturating_sub(FRAMING_RESERVE)
            .max(1)
    }

    /// The producer's in-flight window: librdkafka's own queue bound, so that librdkafka never
    /// answers `QueueFull` and backpressure waits in `enqueue` instead.
    pub fn max_in_flight(&self) -> usize {
        self.properties
            .get("queue.buffering.max.messages")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_QUEUE_BUFFERING_MAX_MESSAGES)
            .clamp(1, 1_000_000)
    }

    /// The librdkafka configuration of the backend's producers: idempotent, no topic
    /// auto-creation, the configured partitioner, a 120 s delivery bound, then every user
    /// property. Public so that a raw-rdkafka baseline (the benchmark harness's) produces with
    /// exactly the backend's properties.
    ///
    /// `message.timeout.ms` bounds a send, retries included: librdkafka's 300 s left a send to a
    /// silent broker pending for five minutes. 120 s is the Java client's `delivery.timeout.ms`,
    /// long enough to ride out a broker restart (the fault test's take ~15 s each).
    ///
    /// This is the `confirmed` configuration whatever [`KafkaConfig::guarantee`] says (requeues
    /// and dead-lettering send with it); [`KafkaConfig::producer_client_config_for`] gives the
    /// others.
    pub fn producer_client_config(&self) -> ClientConfig {
        self.producer_client_config_for(DeliveryGuarantee::Confirmed)
    }

    /// The librdkafka configuration of a producer with `guarantee`: `acks=all` and idempotence
    /// for `confirmed`; `acks=1` (`leader_confirmed`) or `acks=0` (`unconfirmed`) without
    /// idempotence, which needs `acks=all`. Otherwise as [`KafkaConfig::producer_client_config`].
    pub fn producer_client_config_for(&self, guarantee: DeliveryGuarantee) -> ClientConfig {
        let idempotent = if guarantee == DeliveryGuarantee::Confirmed {
            "true"
        } else {
            "false"
        };
        self.client_config(&[
            ("enable.idempotence", idempotent),
            ("acks", acks_of(guarantee)),
            ("allow.auto.create.topics", "false"),
            ("partitioner", self.partitioner.as_str()),
            ("message.timeout.ms", PRODUCER_MESSAGE_TIMEOUT_MS),
        ])
    }

    /// The librdkafka configuration of the backend's consumers in consumer group `group`:
    /// auto-commit of stored offsets, earliest start, no topic auto-creation, a 10 s session
    /// timeout, then every user property; `group.id` and `enable.auto.offset.store=false` are
    /// not overridable, since offsets are stored only for settled messages.
    ///
    /// The session timeout is how long the group waits for a member that stopped heartbeating
    /// before handing its partitions to the others: after a consumer process crashes, its
    /// partitions receive nothing for that long. librdkafka's 45 s default made a restarted
    /// consumer wait 46–63 s. Heartbeats come from librdkafka's own thread, whatever the
    /// application is doing (slow processing is `max.poll.interval.ms`'s business), so 10 s
    /// trips only on a frozen process or a network cut that long. An instance that restarts
    /// under the same name can skip the wait entirely: `?group.instance.id=NAME` (static
    /// membership) gives it its partitions back at once.
    ///
    /// `heartbeat.interval.ms` is 1 s, not librdkafka's 3 s. In the classic (eager) group
    /// protocol a member learns that another consumer joined only from its next heartbeat, and
    /// until it rejoins the group's other members wait with their partitions revoked: several
    /// consumers of one queue started together left 10 of 16 partitions unread for up to 3 s
    /// (measured on Kafka 4.1.1). A heartbeat a second costs the coordinator little. (A second
    /// stall of 1–2 s at such a start is librdkafka's own: it sends at most one JoinGroup a
    /// second per consumer, so a member whose SyncGroup was refused by a later join waits out
    /// that interval; no property shortens it.)
    ///
    /// `fetch.wait.max.ms` is 100 ms, not librdkafka's 500. With `fetch.min.bytes=1` the broker
    /// answers a fetch as soon as one of *its* partitions has data, so the wait costs nothing
    /// to partitions already being fetched; but a partition whose start needs an offset lookup
    /// (no committed offset, or a replay from the beginning) joins only the next fetch, and
    /// its lookup waits behind the fetch in flight on the same broker connection. Its first
    /// records then came up to two waits late: a requeued copy on the queue's own, still empty
    /// topic took ~1.0 s at 500 ms and ~0.25 s at 100 ms. An idle consumer pays for it with
    /// ten fetch requests a second per broker instead of two.
    pub fn consumer_client_config(&self, group: &str) -> ClientConfig {
        let mut cc = self.client_config(&[
            ("enable.auto.commit", "true"),
            ("auto.offset.reset", "earliest"),
            ("allow.auto.create.topics", "false"),
            ("session.timeout.ms", CONSUMER_SESSION_TIMEOUT_MS),
            ("heartbeat.interval.ms", CONSUMER_HEARTBEAT_INTERVAL_MS),
            ("fetch.wait.max.ms", CONSUMER_FETCH_WAIT_MAX_MS),
        ]);
        cc.set("group.id", group)
            .set("enable.auto.offset.store", "false");
        cc
    }

    /// The librdkafka configuration of a transactional unit's producer: the backend's producer
    /// configuration with `transactional.id` (the unit's id) and, when given,
    /// `transaction.timeout.ms`. Idempotence is forced on: transactions are built on it.
    pub fn transactional_producer_client_config(
        &self,
        transactional_id: &str,
        transaction_timeout: Option<Duration>,
    ) -> ClientConfig {
        let mut cc = self.producer_client_config();
        cc.set("transactional.id", transactional_id)
            .set("enable.idempotence", "true");
        if let Some(timeout) = transaction_timeout {
            cc.set(
                "transaction.timeout.ms",
                timeout
                    .as_millis()
                    .clamp(1_000, i32::MAX as u128)
                    .to_string(),
            );
        }
        // librdkafka refuses a transactional producer whose sends may outlive its transaction
        // (`message.timeout.ms` must be <= `transaction.timeout.ms`): unless the user set it, a
        // send's bound is the transaction's.
        if !self.properties.contains_key("message.timeout.ms") {
            let transaction = cc
                .get("transaction.timeout.ms")
                .unwrap_or(LIBRDKAFKA_TRANSACTION_TIMEOUT_MS)
                .to_owned();
            cc.set("message.timeout.ms", transaction);
        }
        cc
    }

    /// The librdkafka configuration of a transactional unit's consumer in group `group`: the
    /// backend's consumer configuration without automatic commits (the offsets are committed
    /// by the transaction) and reading committed records only (an input written by an aborted
    /// upstream transaction must not be processed). Neither is overridable.
    pub fn transactional_consumer_client_config(&self, group: &str) -> ClientConfig {
        let mut cc = self.consumer_client_config(group);
        cc.set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        cc
    }

    /// A librdkafka client configuration: the bootstrap servers, `defaults` where the user set
    /// nothing, then every user property. Invalid properties are reported when a client is made
    /// from it ([`crate::error::client_error`]).
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", self.bootstrap_servers());
        // librdkafka's log reaches `tracing` (see `context.rs`); keep its chatter about retries
        // out of it, unless its debug log was asked for (the `debug` property), which this
        // level would otherwise filter out.
        cc.set_log_level(if self.properties.contains_key("debug") {
            rdkafka::config::RDKafkaLogLevel::Debug
        } else {
            rdkafka::config::RDKafkaLogLevel::Error
        });
        for (k, v) in defaults {
            if !self.properties.contains_key(*k) {
                cc.set(*k, *v);
            }
        }
        for (k, v) in &self.properties {
            cc.set(k, v);
        }
        cc
    }
}

/// Kafka's `acks` for a delivery guarantee.
fn acks_of(guarantee: DeliveryGuarantee) -> &'static str {
    match guarantee {
        DeliveryGuarantee::LeaderConfirmed => "1",
        DeliveryGuarantee::Unconfirmed => "0",
        // `Confirmed`, and any level added later is at least as strong.
        _ => "all",
    }
}

/// The delivery guarantee a Kafka `acks` value gives.
fn guarantee_of_acks(value: &str) -> Result<DeliveryGuarantee> {
    match value {
        "all" | "-1" => Ok(DeliveryGuarantee::Confirmed),
        "1" => Ok(DeliveryGuarantee::LeaderConfirmed),
        "0" => Ok(DeliveryGuarantee::Unconfirmed),
        other => Err(Error::config(format!(
            "kafka:// acks must be all (or -1), 1 or 0, got {other:?}"
        ))
        .with_backend(BACKEND)),
    }
}

fn positive(n: u64, what: &str) -> Result<u32> {
    if n == 0 || n > i32::MAX as u64 {
        return Err(
            Error::config(format!("kafka:// {what} must be at least 1, got {n}"))
                .with_backend(BACKEND),
        );
    }
    Ok(n as u32)
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret(k) { "***" } else { v.as_str() };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &properties)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("default_partitions", &self.default_partitions)
            .field("replication_factor", &self.replication_factor)
            .field("default_prefetch", &self.default_prefetch)
            .field("persistent", &self.persistent)
            .field("partitioner", &self.partitioner)
            .field("transactions", &self.transactions)
            .field("guarantee", &self.guarantee)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_brokers_settings_and_passthrough() {
        let c = KafkaConfig::from_url(
            "kafka://a:9092,b:9093?linger.ms=20&partitions=6&connect_timeout_ms=500",
        )
        .unwrap();
        assert_eq!(c.brokers, vec!["a:9092", "b:9093"]);
        assert_eq!(
            c.properties.get("linger.ms").map(String::as_str),
            Some("20")
        );
        assert_eq!(c.default_partitions, 6);
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
    }

    #[test]
    fn debug_is_passed_to_librdkafka_and_turns_its_log_up() {
        // librdkafka's one dotless property a user asks for when diagnosing a group or a fetch.
        let c = KafkaConfig::from_url("kafka://a:9092?debug=cgrp,fetch").unwrap();
        assert_eq!(
            c.properties.get("debug").map(String::as_str),
            Some("cgrp,fetch")
        );
        let cc = c.client_config(&[]);
        assert_eq!(cc.get("debug"), Some("cgrp,fetch"));
        assert!(
            matches!(cc.log_level, rdkafka::config::RDKafkaLogLevel::Debug),
            "{:?}",
            cc.log_level
        );
    }

    #[test]
    fn rejects_bad_urls_with_the_reason() {
        let e = KafkaConfig::from_url("kafka://host").unwrap_err();
        assert!(e.message().contains("no port"), "{e}");
        let e = KafkaConfig::from_url("kafka://h:99999").unwrap_err();
        assert!(e.message().contains("65535"), "{e}");
        let e = KafkaConfig::from_url("kafka://h:1?bogus=1").unwrap_err();
        assert!(e.message().contains("\"bogus\""), "{e}");
        let e = KafkaConfig::from_url("kafka://h:1?partitions=0").unwrap_err();
        assert!(e.message().contains("partitions"), "{e}");
        assert!(KafkaConfig::from_url("amqp://h:1").is_err());
        assert!(KafkaConfig::from_url("kafka://").is_err());
    }

    #[test]
    fn secrets_never_appear_in_debug() {
        let c = KafkaConfig::from_url(
            "kafka://alice:s3cr3t@h:9092?ssl.key.password=hunter2&sasl.oauthbearer.client.secret=xyz",
        )
        .unwrap();
        assert_eq!(c.properties["sasl.username"], "alice");
        assert_eq!(c.properties["sasl.password"], "s3cr3t");
        let shown = format!("{c:?}");
        for secret in ["s3cr3t", "hunter2", "xyz"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("alice"));
    }

    #[test]
    fn partitioner_is_java_compatible_unless_chosen() {
        let producer = |c: &KafkaConfig| {
            c.producer_client_config()
                .get("partitioner")
                .map(str::to_owned)
        };
        assert_eq!(
            producer(&KafkaConfig::default()).as_deref(),
            Some("murmur2_random")
        );
        let c = KafkaConfig::from_url("kafka://h:1?partitioner=consistent_random").unwrap();
        assert_eq!(c.partitioner, Partitioner::ConsistentRandom);
        assert_eq!(producer(&c).as_deref(), Some("consistent_random"));
        let e = KafkaConfig::from_url("kafka://h:1?partitioner=crc").unwrap_err();
        assert_eq!(e.kind(), mailroom_core::ErrorKind::Config);
        assert!(
            e.message().contains("\"crc\"") && e.message().contains("murmur2_random"),
            "{e}"
        );
    }

    #[test]
    fn a_send_gives_up_after_two_minutes_unless_configured() {
        let timeout = |c: &KafkaConfig| {
            c.producer_client_config()
                .get("message.timeout.ms")
                .map(str::to_owned)
        };
        assert_eq!(timeout(&KafkaConfig::default()).as_deref(), Some("120000"));
        let c = KafkaConfig::from_url("kafka://h:1?message.timeout.ms=5000").unwrap();
        assert_eq!(timeout(&c).as_deref(), Some("5000"));
    }

    #[test]
    fn a_transactional_send_never_outlives_its_transaction() {
        let send_bound = |c: &KafkaConfig, t: Option<Duration>| {
            c.transactional_producer_client_config("t", t)
                .get("message.timeout.ms")
                .map(str::to_owned)
        };
        let c = KafkaConfig::default();
        assert_eq!(
            send_bound(&c, Some(Duration::from_secs(10))).as_deref(),
            Some("10000")
        );
        assert_eq!(send_bound(&c, None).as_deref(), Some("60000"));
        let c = KafkaConfig::from_url("kafka://h:1?transaction.timeout.ms=30000").unwrap();
        assert_eq!(send_bound(&c, None).as_deref(), Some("30000"));
        let c = KafkaConfig::from_url("kafka://h:1?message.timeout.ms=5000").unwrap();
        assert_eq!(send_bound(&c, None).as_deref(), Some("5000"));
    }

    #[test]
    fn a_crashed_member_is_given_up_after_ten_seconds_unless_configured() {
        let session = |c: &KafkaConfig| {
            c.consumer_client_config("g")
                .get("session.timeout.ms")
                .map(str::to_owned)
        };
        assert_eq!(session(&KafkaConfig::default()).as_deref(), Some("10000"));
        let c = KafkaConfig::from_url("kafka://h:1?session.timeout.ms=30000").unwrap();
        assert_eq!(session(&c).as_deref(), Some("30000"));
    }

    #[test]
    fn members_heartbeat_every_second_unless_configured() {
        let heartbeat = |c: &KafkaConfig| {
            c.consumer_client_config("g")
                .get("heartbeat.interval.ms")
                .map(str::to_owned)
        };
        assert_eq!(heartbeat(&KafkaConfig::default()).as_deref(), Some("1000"));
        let c = KafkaConfig::from_url("kafka://h:1?heartbeat.interval.ms=3000").unwrap();
        assert_eq!(heartbeat(&c).as_deref(), Some("3000"));
    }

    #[test]
    fn consumers_fetch_wait_is_100_ms_unless_configured() {
        let wait = |c: &KafkaConfig| {
            c.consumer_client_config("g")
                .get("fetch.wait.max.ms")
                .map(str::to_owned)
        };
        assert_eq!(wait(&KafkaConfig::default()).as_deref(), Some("100"));
        let c = KafkaConfig::from_url("kafka://h:1?fetch.wait.max.ms=500").unwrap();
        assert_eq!(wait(&c).as_deref(), Some("500"));
        // The transactional unit's consumer is made from the same configuration.
        let t = KafkaConfig::default().transactional_consumer_client_config("g");
        assert_eq!(t.get("fetch.wait.max.ms"), Some("100"));
    }

    #[test]
    fn transactional_clients_commit_through_the_transaction_only() {
        let c = KafkaConfig::from_url(
            "kafka://h:1?enable.auto.commit=true&isolation.level=read_uncommitted&enable.idempotence=false",
        )
        .unwrap();
        let consumer = c.transactional_consumer_client_config("g");
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        let producer =
            c.transactional_producer_client_config("tx-1", Some(Duration::from_secs(20)));
        assert_eq!(producer.get("transactional.id"), Some("tx-1"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("transaction.timeout.ms"), Some("20000"));
        assert!(c.transactions);
        let off = KafkaConfig::from_url("kafka://h:1?transactions=false").unwrap();
        assert!(!off.transactions);
        assert!(!crate::capabilities(&off).transactions);
        assert!(crate::capabilities(&c).transactions);
        let e = KafkaConfig::from_url("kafka://h:1?transactions=maybe").unwrap_err();
        assert!(e.message().contains("transactions"), "{e}");
    }

    #[test]
    fn acks_follow_the_guarantee_and_idempotence_needs_acks_all() {
        let producer = |c: &KafkaConfig, g| {
            let cc = c.producer_client_config_for(g);
            (
                cc.get("acks").map(str::to_owned),
                cc.get("enable.idempotence").map(str::to_owned),
            )
        };
        let c = KafkaConfig::default();
        assert_eq!(c.guarantee, DeliveryGuarantee::Confirmed);
        let confirmed = (Some("all".to_owned()), Some("true".to_owned()));
        assert_eq!(producer(&c, DeliveryGuarantee::Confirmed), confirmed);
        assert_eq!(
            producer(&c, DeliveryGuarantee::LeaderConfirmed),
            (Some("1".to_owned()), Some("false".to_owned()))
        );
        assert_eq!(
            producer(&c, DeliveryGuarantee::Unconfirmed),
            (Some("0".to_owned()), Some("false".to_owned()))
        );
        // Requeues, dead letters and transactions stay confirmed whatever the URL says.
        let weak = KafkaConfig::from_url("kafka://h:1?acks=0").unwrap();
        assert_eq!(weak.guarantee, DeliveryGuarantee::Unconfirmed);
        let cc = weak.producer_client_config();
        assert_eq!(cc.get("acks"), Some("all"));
        let tx = weak.transactional_producer_client_config("t", None);
        assert_eq!(tx.get("acks"), Some("all"));
        assert_eq!(tx.get("enable.idempotence"), Some("true"));
        for (url, level) in [
            (
                "kafka://h:1?guarantee=leader_confirmed",
                DeliveryGuarantee::LeaderConfirmed,
            ),
            ("kafka://h:1?acks=1", DeliveryGuarantee::LeaderConfirmed),
            ("kafka://h:1?acks=all", DeliveryGuarantee::Confirmed),
            ("kafka://h:1?acks=-1", DeliveryGuarantee::Confirmed),
            (
                "kafka://h:1?request.required.acks=0",
                DeliveryGuarantee::Unconfirmed,
            ),
            (
                "kafka://h:1?guarantee=unconfirmed",
                DeliveryGuarantee::Unconfirmed,
            ),
        ] {
            assert_eq!(
                KafkaConfig::from_url(url).unwrap().guarantee,
                level,
                "{url}"
            );
        }
    }

    #[test]
    fn contradictory_or_bad_guarantees_are_config_errors() {
        use mailroom_core::ErrorKind;
        let e = KafkaConfig::from_url("kafka://h:1?acks=1&enable.idempotence=true").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("idempotence needs acks=all"), "{e}");
        let e = KafkaConfig::from_url("kafka://h:1?acks=2").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("\"2\""), "{e}");
        let e = KafkaConfig::from_url("kafka://h:1?guarantee=at_most_once").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("\"at_most_once\""), "{e}");
        // A property set in code that names another level than the guarantee.
        let c = KafkaConfig::default().property("acks", "0");
        let e = c.check_guarantee(DeliveryGuarantee::Confirmed).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("acks=0"), "{e}");
        assert!(c.check_guarantee(DeliveryGuarantee::Unconfirmed).is_ok());
    }

    #[test]
    fn size_limit_follows_message_max_bytes() {
        let c = KafkaConfig::default().property("message.max.bytes", "10000");
        assert_eq!(c.max_message_size(), 10000 - FRAMING_RESERVE);
        assert_eq!(
            KafkaConfig::default().max_message_size(),
            DEFAULT_MESSAGE_MAX_BYTES - FRAMING_RESERVE
        );
    }
}
