//! The exchange API on Kafka: queues and exchanges are topics; bindings are remembered.
//!
//! * A **queue** `Q` is a topic `Q` plus the consumer group `Q` that `consumer(Q)` joins.
//! * An **exchange** `E` (any kind) is a topic `E`; a send to it carries its routing key in the
//!   `x-mailroom-routing-key` header. Binding `Q` to `E` makes every later `consumer(Q)`
//!   subscribe group `Q` to topic `E` as well, and commits group `Q`'s offsets on `E` at `E`'s
//!   current end, so the queue receives what is published *after* the bind (as in AMQP) rather
//!   than the exchange's whole retained history.
//! * **Routing is client-side** (`routing.rs`): Kafka routes nothing, so a consumer of `Q` reads
//!   every record of `E` and delivers those that one of `Q`'s bindings to `E` matches (fanout:
//!   all; direct: the key; topic: the pattern; headers: all / any of the pairs); the others are
//!   settled at once, undelivered, so the group's committed offsets pass over them. Every
//!   subscriber therefore reads the whole topic, whatever share of it its bindings select.
//!
//! Queue settings Kafka has no place for (dead-letter queue, max delivery attempts) and bindings
//! live in a registry shared by every connection to the same bootstrap servers **in this
//! process**. They do not survive a restart of the process: the process that consumes a queue
//! declares its bindings at start-up (declarations are idempotent), as is usual with AMQP
//! topologies too. Only the consuming process needs them, since the routing happens in its
//! consumer; a producer needs only the exchange's topic. The topics, their messages and the
//! groups' committed offsets are on the broker and do survive. A bind or unbind on an exchange
//! a running consumer already reads takes effect at its next record; a bind to an exchange it
//! does not read yet takes effect when the queue's consumer is opened again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mailroom_core::operation::{
    BIND, DECLARE_EXCHANGE, DECLARE_QUEUE, DELETE_EXCHANGE, DELETE_QUEUE,
};
use mailroom_core::{
    Binding, Capability, Error, ExchangeKind, ExchangeSpec, QueueSpec, Result, Route, Topology,
};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::connection::{blocking, Connection, Writable};
use crate::{error, BACKEND};

/// Longest topic name Kafka accepts.
const MAX_TOPIC_BYTES: usize = 249;

/// Check a name against Kafka's topic rules (which are stricter than mailroom's).
pub(crate) fn validate_topic(what: &str, name: &str) -> Result<()> {
    mailroom_core::topology::validate_name(what, name).map_err(|e| e.with_backend(BACKEND))?;
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.len() > MAX_TOPIC_BYTES || name == "." || name == ".." || !name.chars().all(legal) {
        return Err(Error::invalid_input(format!(
            "{what} name {name:?} is not a valid Kafka topic name: use at most {MAX_TOPIC_BYTES} \
             of the characters a-z A-Z 0-9 . _ -"
        ))
        .with_backend(BACKEND));
    }
    Ok(())
}

/// What a queue needs that Kafka does not store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QueueSettings {
    pub dead_letter_queue: Option<String>,
    pub max_delivery_attempts: Option<u32>,
}

#[derive(Default)]
struct DeclaredState {
    queues: HashMap<String, QueueSettings>,
    exchanges: HashMap<String, ExchangeKind>,
    /// queue -> the exchanges it is bound to -> the routes of its bindings to each.
    bindings: HashMap<String, BTreeMap<String, Vec<Route>>>,
}

/// How often a new topic is looked at until its partitions take writes.
const TOPIC_VISIBLE_POLL: Duration = Duration::from_millis(20);

/// Queue settings and bindings of one cluster, shared in this process.
#[derive(Default)]
pub(crate) struct Declared {
    state: Mutex<DeclaredState>,
    /// Bumped on every change of the bindings, so that a running consumer refreshes its copy
    /// of them by reading one atomic per record instead of taking the lock.
    generation: AtomicU64,
}

impl Declared {
    /// The registry of the cluster at these bootstrap servers.
    pub fn for_cluster(bootstrap: &str) -> Arc<Declared> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<Declared>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(bootstrap.to_owned()).or_default().clone()
    }

    fn lock(&self) -> MutexGuard<'_, DeclaredState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn queue_settings(&self, queue: &str) -> QueueSettings {
        self.lock().queues.get(queue).cloned().unwrap_or_default()
    }

    pub fn bound_exchanges(&self, queue: &str) -> Vec<String> {
        self.lock()
            .bindings
            .get(queue)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The generation of the bindings: it changes whenever a binding is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The routes of `queue`'s bindings, by exchange, with the generation they were read at.
    pub fn routes(&self, queue: &str) -> (u64, Vec<(String, Vec<Route>)>) {
        let state = self.lock();
        let generation = self.generation();
        let routes = state
            .bindings
            .get(queue)
            .map(|b| b.iter().map(|(e, r)| (e.clone(), r.clone())).collect())
            .unwrap_or_default();
        (generation, routes)
    }

    /// Record a binding; true if it is the queue's first binding to that exchange.
    pub fn add_binding(&self, binding: &Binding) -> bool {
        let mut state = self.lock();
        let routes = state
            .bindings
            .entry(binding.queue.clone())
            .or_default()
            .entry(binding.exchange.clone())
            .or_default();
        let first = routes.is_empty();
        if !routes.contains(&binding.route) {
            routes.push(binding.route.clone());
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        first
    }

    /// Forget a binding; the queue stays subscribed to the exchange's topic while it has
    /// others there.
    pub fn remove_binding(&self, binding: &Binding) {
        let mut state = self.lock();
        let Some(exchanges) = state.bindings.get_mut(&binding.queue) else {
            return;
        };
        if let Some(routes) = exchanges.get_mut(&binding.exchange) {
            routes.retain(|r| *r != binding.route);
            if routes.is_empty() {
                exchanges.remove(&binding.exchange);
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Forget an exchange, its bindings with it.
    fn remove_exchange(&self, exchange: &str) {
        let mut state = self.lock();
        state.exchanges.remove(exchange);
        for bound in state.bindings.values_mut() {
            bound.remove(exchange);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Forget a queue, its settings and bindings with it.
    fn remove_queue(&self, queue: &str) {
        let mut state = self.lock();
        state.queues.remove(queue);
        state.bindings.remove(queue);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Delete topics now.
pub(crate) async fn delete_topics(
    connection: &Connection,
    names: &[String],
    operation: &'static str,
) -> Result<()> {
    let timeout = connection.config.operation_timeout;
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let results = connection
        .admin
        .delete_topics(&refs, &options)
        .await
        .map_err(|e| error::map(e, operation))?;
    if let Ok(internal) = connection.internal_producer() {
        for name in names {
            internal.forget_topic(name);
        }
    }
    for result in results {
        if let Err((topic, code)) = result {
            return Err(error::map_code(
                code,
                format!("deleting topic '{topic}'"),
                operation,
            ));
        }
    }
    Ok(())
}

/// The topology API of a Kafka connection.
#[derive(Clone)]
pub struct KafkaTopology {
    connection: Arc<Connection>,
}

impl KafkaTopology {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        KafkaTopology { connection }
    }

    /// Create a topic; an existing one is fine when its partition count matches `partitions`.
    async fn create_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        configs: &[(String, String)],
        operation: &'static str,
    ) -> Result<()> {
        let count = partitions.unwrap_or(self.connection.config.default_partitions) as i32;
        let mut topic = NewTopic::new(
            name,
            count,
            TopicReplication::Fixed(self.connection.config.replication_factor),
        );
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let timeout = self.connection.config.operation_timeout;
        let options = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        let results = self
            .connection
            .admin
            .create_topics(&[topic], &options)
            .await
            .map_err(|e| error::map(e, operation))?;
        for result in results {
            match result {
                Ok(_) => {
                    self.await_topic_writable(name, count as usize, operation)
                        .await?
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    // Another declare may have created it a moment ago: it is no more
                    // writable than one this call created.
                    self.await_topic_writable(name, 1, operation).await?;
                    if let Some(want) = partitions {
                        let have = self.connection.partitions(name).await?.unwrap_or_default();
                        if have.len() != want as usize {
                            return Err(Error::new(
                                mailroom_core::ErrorKind::Conflict,
                                format!(
                                    "topic '{name}' exists with {} partitions, not {want}",
                                    have.len()
                                ),
                            )
                            .with_backend(BACKEND)
                            .with_operation(operation));
                        }
                    }
                }
                Err((topic, code)) => {
                    return Err(error::map_code(
                        code,
                        format!("creating topic '{topic}'"),
                        operation,
                    ))
                }
            }
        }
        Ok(())
    }

    async fn delete_topic(&self, name: &str, operation: &'static str) -> Result<()> {
        delete_topics(&self.connection, &[name.to_owned()], operation).await
    }

    /// Wait until the leader of each of `name`'s `partitions` partitions takes writes.
    ///
    /// CreateTopics returns once the controller has recorded the topic; the broker learns of it
    /// a moment later, and its leader makes the partitions' logs a moment after that (see
    /// [`crate::connection::topic_writable`]). Returning earlier let a bind, a consumer or a send
    /// right after `declare_queue` find no such topic, and an `acks=0` send lose its records.
    async fn await_topic_writable(
        &self,
        name: &str,
        partitions: usize,
        operation: &'static str,
    ) -> Result<()> {
        let timeout = self.connection.config.operation_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let connection = self.connection.clone();
            let topic = name.to_owned();
            let found = blocking(move || {
                crate::connection::topic_writable(
                    connection.admin.inner(),
                    &topic,
                    partitions,
                    connection.config.operation_timeout,
                )
            })
            .await
            .map_err(|e| e.with_operation(operation))?;
            let why = match found {
                Writable::Yes => return Ok(()),
                Writable::NotYet(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(Error::new(
                    mailroom_core::ErrorKind::Timeout,
                    format!(
                        "topic '{name}' exists but its {partitions} partitions did not all take \
                         writes within {timeout:?} (last: {why})"
                    ),
                )
                .with_backend(BACKEND)
                .with_operation(operation));
            }
            tokio::time::sleep(TOPIC_VISIBLE_POLL).await;
        }
    }

    /// Point group `queue` at the end of `exchange`, where it has no committed offset yet.
    async fn start_group_at_end(&self, exchange: &str, queue: &str) -> Result<()> {
        let connection = self.connection.clone();
        let (exchange, queue) = (exchange.to_owned(), queue.to_owned());
        blocking(move || {
            let timeout = connection.config.operation_timeout;
            let partitions =
                crate::connection::topic_partitions(connection.admin.inner(), &exchange, timeout)?
                    .unwrap_or_default();
            let mut cc = connection.config.client_config(&[]);
            cc.set("group.id", &queue)
                .set("enable.auto.commit", "false");
            let consumer: BaseConsumer = cc.create().map_err(|e| error::map(e, BIND))?;
            let mut wanted = TopicPartitionList::new();
            for p in &partitions {
                wanted.add_partition(&exchange, *p);
            }
            let committed = consumer
                .committed_offsets(wanted, timeout)
                .map_err(|e| error::map(e, BIND))?;
            let mut start = TopicPartitionList::new();
            for e in committed.elements() {
                if let Offset::Offset(_) = e.offset() {
                    continue;
                }
                let (_, high) = consumer
                    .fetch_watermarks(&exchange, e.partition(), timeout)
                    .map_err(|e| error::map(e, BIND))?;
                start
                    .add_partition_offset(&exchange, e.partition(), Offset::Offset(high))
                    .map_err(|e| error::map(e, BIND))?;
            }
            if start.count() > 0 {
                consumer
                    .commit(&start, CommitMode::Sync)
                    .map_err(|e| error::map(e, BIND))?;
            }
            Ok(())
        })
        .await
    }

    fn require(&self, capability: Capability, operation: &'static str) -> Result<()> {
        self.connection
            .capabilities
            .require(capability, BACKEND, operation)
    }
}

#[async_trait]
impl Topology for KafkaTopology {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        validate_topic("exchange", &spec.name)?;
        self.connection.check_open(DECLARE_EXCHANGE)?;
        if let Some(kind) = self.connection.declared.lock().exchanges.get(&spec.name) {
            if *kind != spec.kind {
                return Err(Error::new(
                    mailroom_core::ErrorKind::Conflict,
                    format!(
                        "exchange '{}' exists as {kind}, not {}",
                        spec.name, spec.kind
                    ),
                )
                .with_backend(BACKEND)
                .with_operation(DECLARE_EXCHANGE));
            }
        }
        self.create_topic(&spec.name, None, &[], DECLARE_EXCHANGE)
            .await?;
        self.connection
            .declared
            .lock()
            .exchanges
            .insert(spec.name.clone(), spec.kind);
        Ok(())
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        validate_topic("exchange", name)?;
        self.connection.check_open(DELETE_EXCHANGE)?;
        self.delete_topic(name, DELETE_EXCHANGE).await?;
        self.connection.declared.remove_exchange(name);
        Ok(())
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()> {
        validate_topic("queue", &spec.name)?;
        if let Some(dlq) = &spec.dead_letter_queue {
            validate_topic("dead-letter queue", dlq)?;
        }
        self.connection.check_open(DECLARE_QUEUE)?;
        let meta = QueueSettings {
            dead_letter_queue: spec.dead_letter_queue.clone(),
            max_delivery_attempts: spec.max_delivery_attempts,
        };
        if let Some(existing) = self.connection.declared.lock().queues.get(&spec.name) {
            if *existing != meta {
                return Err(Error::new(
                    mailroom_core::ErrorKind::Conflict,
                    format!(
                        "queue '{}' was declared with {existing:?}, not {meta:?}",
                        spec.name
                    ),
                )
                .with_backend(BACKEND)
                .with_operation(DECLARE_QUEUE));
            }
        }
        // `extra` entries are topic configs (retention.ms, cleanup.policy, ...).
        let configs: Vec<(String, String)> = spec
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.create_topic(&spec.name, spec.partitions, &configs, DECLARE_QUEUE)
            .await?;
        self.connection
            .declared
            .lock()
            .queues
            .insert(spec.name.clone(), meta);
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        validate_topic("queue", name)?;
        self.connection.check_open(DELETE_QUEUE)?;
        self.delete_topic(name, DELETE_QUEUE).await?;
        self.connection.declared.remove_queue(name);
        Ok(())
    }

    async fn bind(&self, binding: &Binding) -> Result<()> {
        binding.validate().map_err(|e| e.with_backend(BACKEND))?;
        let known = self
            .connection
            .declared
            .lock()
            .exchanges
            .get(&binding.exchange)
            .copied();
        // An exchange declared by another process is a bare topic: the route says its kind.
        let kind = known.unwrap_or_else(|| route_kind(&binding.route));
        self.require(Capability::Exchange(kind), BIND)?;
        if !binding.route.fits(kind) {
            return Err(Error::invalid_input(format!(
                "exchange '{}' is {kind}: {:?} is not a {kind} binding's route",
                binding.exchange, binding.route
            ))
            .with_backend(BACKEND)
            .with_operation(BIND));
        }
        validate_topic("exchange", &binding.exchange)?;
        validate_topic("queue", &binding.queue)?;
        self.connection.check_open(BIND)?;
        for (what, topic) in [("exchange", &binding.exchange), ("queue", &binding.queue)] {
            if self.connection.partitions(topic).await?.is_none() {
                return Err(Error::not_found(format!(
                    "{what} '{topic}' does not exist; declare it first"
                ))
                .with_backend(BACKEND)
                .with_operation(BIND));
            }
        }
        if self.connection.declared.add_binding(binding) {
            if let Err(e) = self
                .start_group_at_end(&binding.exchange, &binding.queue)
                .await
            {
                // The group is active or the broker refused: the queue then starts at the
                // exchange's earliest retained message (auto.offset.reset=earliest).
                tracing::warn!(
                    exchange = %binding.exchange,
                    queue = %binding.queue,
                    error = %e,
                    "could not start the queue's group at the exchange's end"
                );
            }
        }
        Ok(())
    }

    async fn unbind(&self, binding: &Binding) -> Result<()> {
        binding.validate().map_err(|e| e.with_backend(BACKEND))?;
        self.connection.declared.remove_binding(binding);
        Ok(())
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        validate_topic("queue", queue)?;
        self.connection
            .check_open(mailroom_core::operation::QUEUE_DEPTH)?;
        crate::lag::consumer_lag(self.connection.clone(), queue)
            .await
            .map(Some)
    }
}

/// The kind of exchange a route binds to.
fn route_kind(route: &Route) -> ExchangeKind {
    match route {
        Route::Key(_) => ExchangeKind::Direct,
        Route::Pattern(_) => ExchangeKind::Topic,
        Route::All => ExchangeKind::Fanout,
        Route::Headers { .. } => ExchangeKind::Headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_keep_every_route_per_exchange_and_bump_the_generation() {
        let declared = Declared::default();
        let a = Binding::key("ex", "q", "a");
        let b = Binding::key("ex", "q", "b");
        let g0 = declared.generation();
        assert!(declared.add_binding(&a), "first binding of q to ex");
        assert!(!declared.add_binding(&b));
        assert!(!declared.add_binding(&a), "a repeated bind is idempotent");
        let (g1, routes) = declared.routes("q");
        assert!(g1 > g0);
        assert_eq!(
            routes,
            vec![("ex".to_owned(), vec![a.route.clone(), b.route.clone()])]
        );
        declared.remove_binding(&a);
        let (g2, routes) = declared.routes("q");
        assert!(g2 > g1);
        assert_eq!(routes, vec![("ex".to_owned(), vec![b.route.clone()])]);
        declared.remove_binding(&b);
        assert!(
            declared.bound_exchanges("q").is_empty(),
            "no route left: unsubscribed"
        );
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic("queue", "orders.eu_1-x").is_ok());
        assert!(validate_topic("queue", "has:colon").is_err());
        assert!(validate_topic("queue", "..").is_err());
        assert!(validate_topic("queue", &"a".repeat(250)).is_err());
        assert!(validate_topic("queue", "").is_err());
    }
}
