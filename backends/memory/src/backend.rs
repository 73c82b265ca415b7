//! The broker: its exchanges, queues and bindings, and the backend handle over it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use async_trait::async_trait;
use mailroom_core::delivery::stamp_dead_letter;
use mailroom_core::{
    Backend, Capabilities, Consumer, ConsumerOptions, Error, ExchangeKind, Producer, Result, Route,
    Topology,
};

use crate::config::MemoryConfig;
use crate::consumer::MemoryConsumer;
use crate::producer::MemoryProducer;
use crate::queue::{Entry, Queue, QueueDepth};
use crate::BACKEND;

pub(crate) struct ExchangeState {
    pub kind: ExchangeKind,
    pub durable: bool,
    /// (route, queue name) pairs, in bind order, without duplicates.
    pub bindings: Vec<(Route, String)>,
}

#[derive(Default)]
pub(crate) struct Topo {
    pub exchanges: HashMap<String, ExchangeState>,
    pub queues: HashMap<String, Arc<Queue>>,
}

/// The shared state behind every handle of one in-memory broker.
pub(crate) struct Broker {
    pub config: MemoryConfig,
    pub capabilities: Capabilities,
    topo: RwLock<Topo>,
    closed: AtomicBool,
}

impl Broker {
    fn new(config: MemoryConfig) -> Self {
        let capabilities = crate::capabilities(&config);
        Broker {
            config,
            capabilities,
            topo: RwLock::new(Topo::default()),
            closed: AtomicBool::new(false),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Topo> {
        // Topology updates are single map operations; a poisoned lock still holds a valid map.
        self.topo.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Topo> {
        self.topo.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.is_closed() {
            Err(Error::closed("the memory broker connection is closed")
                .with_backend(BACKEND)
                .with_operation(operation))
        } else {
            Ok(())
        }
    }

    pub fn queue(&self, name: &str) -> Result<Arc<Queue>> {
        self.read().queues.get(name).cloned().ok_or_else(|| {
            Error::not_found(format!("queue '{name}' does not exist; declare it first"))
                .with_backend(BACKEND)
        })
    }

    /// The queues an exchange routes this message to, each once.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &mailroom_core::Message,
    ) -> Result<Vec<Arc<Queue>>> {
        let topo = self.read();
        let state = topo.exchanges.get(exchange).ok_or_else(|| {
            Error::not_found(format!(
                "exchange '{exchange}' does not exist; declare it first"
            ))
            .with_backend(BACKEND)
            .with_operation("send")
        })?;
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        for (route, queue) in &state.bindings {
            if targets.iter().any(|q| q.name() == queue) {
                continue;
            }
            if route.matches(routing_key, message.headers()) {
                if let Some(q) = topo.queues.get(queue) {
                    targets.push(q.clone());
                }
            }
        }
        Ok(targets)
    }

    /// Move a message to its queue's dead-letter target, or drop it (with a warning) when the
    /// queue has none — the same as AMQP, where dead-lettering without a target discards.
    pub fn dead_letter(&self, from: &Queue, mut entry: Entry, reason: &str) {
        let Some(target) = from.spec.dead_letter_queue.as_deref() else {
            tracing::warn!(
                queue = from.name(),
                id = %entry.message.id(),
                reason,
                "message dead-lettered from a queue without a dead-letter queue: discarded"
            );
            return;
        };
        let target_queue = self.read().queues.get(target).cloned();
        match target_queue {
            Some(dlq) => {
                stamp_dead_letter(&mut entry.message, from.name(), reason, entry.deliveries);
                dlq.push_unbounded(dlq.entry(entry.message), None, false);
            }
            None => tracing::warn!(
                queue = from.name(),
                dead_letter_queue = target,
                id = %entry.message.id(),
                "dead-letter queue does not exist: message discarded"
            ),
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for queue in self.read().queues.values() {
            queue.readable().notify_waiters();
        }
    }
}

/// A connection to an in-memory broker.
///
/// Cloning is cheap and every clone sees the same broker. A broker opened by name
/// (`memory://NAME`) is shared by every connection to that name in this process while any of
/// them is alive.
#[derive(Clone)]
pub struct MemoryBackend {
    pub(crate) broker: Arc<Broker>,
}

fn named_brokers() -> &'static Mutex<HashMap<String, Weak<Broker>>> {
    static NAMED: OnceLock<Mutex<HashMap<String, Weak<Broker>>>> = OnceLock::new();
    NAMED.get_or_init(Default::default)
}

impl MemoryBackend {
    /// A private broker with the default configuration.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A broker with this configuration (shared by name if `config.name` is set).
    pub fn with_config(config: MemoryConfig) -> Self {
        let Some(name) = config.name.clone() else {
            return MemoryBackend {
                broker: Arc::new(Broker::new(config)),
            };
        };
        let mut named = named_brokers().lock().unwrap_or_else(|p| p.into_inner());
        named.retain(|_, weak| weak.strong_count() > 0);
        if let Some(broker) = named.get(&name).and_then(Weak::upgrade) {
            return MemoryBackend { broker };
        }
        let broker = Arc::new(Broker::new(config));
        named.insert(name, Arc::downgrade(&broker));
        MemoryBackend { broker }
    }

    /// Open from a `memory://` URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::with_config(MemoryConfig::from_url(url)?))
    }

    /// How many messages a queue holds (ready, delayed, unacked).
    pub fn queue_depth(&self, queue: &str) -> Result<QueueDepth> {
        Ok(self.broker.queue(queue)?.depth())
    }

    /// A typed producer (the same as `Backend::producer`, without the box).
    pub fn memory_producer(&self) -> MemoryProducer {
        MemoryProducer::new(self.broker.clone())
    }

    /// A typed consumer (the same as `Backend::consumer`, without the box).
    pub fn memory_consumer(&self, queue: &str, options: ConsumerOptions) -> Result<MemoryConsumer> {
        MemoryConsumer::new(self.broker.clone(), queue, options)
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.broker.config)
            .finish()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> &Capabilities {
        &self.broker.capabilities
    }

    async fn server_version(&self) -> Result<String> {
        Ok(format!("mailroom-memory {}", env!("CARGO_PKG_VERSION")))
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        self.broker.check_open("producer")?;
        Ok(Box::new(self.memory_producer()))
    }

    async fn consumer(&self, queue: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.memory_consumer(queue, options)?))
    }

    fn topology(&self) -> &dyn Topology {
        self
    }

    async fn close(&self) -> Result<()> {
        self.broker.close();
        Ok(())
    }
}
