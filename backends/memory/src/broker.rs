//! The broker itself: its exchanges, its queues and the routes between them, shared by every
//! handle of one `memory://` connection (and, by name, by every connection to that name).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use mailroom_core::republish::warn_discarded;
use mailroom_core::{Capabilities, ClosedFlag, ExchangeKind, Message, Result, Route};

use crate::codec::Entry;
use crate::config::MemoryConfig;
use crate::error;
use crate::queue::Queue;
use crate::BACKEND;

pub(crate) struct ExchangeState {
    pub kind: ExchangeKind,
    pub durable: bool,
    /// (route, queue name) pairs, in bind order, without duplicates.
    pub bindings: Vec<(Route, String)>,
}

/// Hashes names the way rustc's `FxHasher` does: a multiply and a rotate per word, several
/// times cheaper than the standard SipHash on the short names a route looks up per message.
/// SipHash guards a map against keys chosen to collide; these names are the application's own.
#[derive(Default, Clone, Copy)]
pub(crate) struct NameHasher(u64);

impl Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(SEED);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by name, hashed with [`NameHasher`].
pub(crate) type ByName<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// Everything declared on one broker.
#[derive(Default)]
pub(crate) struct Declared {
    pub exchanges: ByName<ExchangeState>,
    pub queues: ByName<Arc<Queue>>,
}

/// The shared state behind every handle of one in-memory broker.
pub(crate) struct Broker {
    pub config: MemoryConfig,
    pub capabilities: Capabilities,
    /// The size limit when it is the only thing `Capabilities::check_message` can refuse a
    /// message for here (no header limits, repeated names allowed, delays without a maximum):
    /// a message within it passes the check, so a send only compares its length.
    pub size_limit_only: Option<usize>,
    declared: RwLock<Declared>,
    closed: ClosedFlag,
}

fn named_brokers() -> &'static Mutex<HashMap<String, Weak<Broker>>> {
    static NAMED: OnceLock<Mutex<HashMap<String, Weak<Broker>>>> = OnceLock::new();
    NAMED.get_or_init(Default::default)
}

impl Broker {
    fn new(config: MemoryConfig) -> Self {
        let capabilities = crate::capabilities(&config);
        let c = &capabilities;
        let size_limit_only = c.max_message_size.filter(|_| {
            c.max_headers.is_none()
                && c.repeated_header_names
                && c.delayed_delivery
                && c.max_delay.is_none()
        });
        Broker {
            config,
            capabilities,
            size_limit_only,
            declared: RwLock::new(Declared::default()),
            closed: ClosedFlag::new(BACKEND),
        }
    }

    /// A private broker, or the one shared under `config.name` while any handle keeps it.
    pub fn open(config: MemoryConfig) -> Arc<Broker> {
        let Some(name) = config.name.clone() else {
            return Arc::new(Broker::new(config));
        };
        let mut named = named_brokers().lock().unwrap_or_else(|p| p.into_inner());
        named.retain(|_, weak| weak.strong_count() > 0);
        if let Some(broker) = named.get(&name).and_then(Weak::upgrade) {
            return broker;
        }
        let broker = Arc::new(Broker::new(config));
        named.insert(name, Arc::downgrade(&broker));
        broker
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Declared> {
        // Topology updates are single map operations; a poisoned lock still holds a valid map.
        self.declared.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Declared> {
        self.declared.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_closed()
    }

    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        self.closed.check_open(operation)
    }

    pub fn queue(&self, name: &str) -> Result<Arc<Queue>> {
        self.read()
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| error::no_queue(name))
    }

    /// The queues an exchange routes this message to, each once.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<Vec<Arc<Queue>>> {
        let declared = self.read();
        let state = declared
            .exchanges
            .get(exchange)
            .ok_or_else(|| error::no_exchange(exchange, mailroom_core::operation::SEND))?;
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        for (route, queue) in &state.bindings {
            if targets.iter().any(|q| q.name() == queue) {
                continue;
            }
            if route.matches(routing_key, message.headers()) {
                if let Some(q) = declared.queues.get(queue) {
                    targets.push(q.clone());
                }
            }
        }
        Ok(targets)
    }

    /// Move a message to its queue's dead-letter target, or drop it (with a warning) when the
    /// queue has none — the same as AMQP, where dead-lettering without a target discards.
    pub fn dead_letter(&self, from: &Queue, entry: Entry, reason: &str) {
        let Some(target) = from.spec.dead_letter_queue.as_deref() else {
            warn_discarded(from.name(), entry.message.id(), reason);
            return;
        };
        let target_queue = self.read().queues.get(target).cloned();
        match target_queue {
            Some(dlq) => {
                let dead = entry.into_dead_letter(from.name(), reason);
                dlq.push_unbounded(dlq.entry(dead), None, false);
            }
            None => tracing::warn!(
                queue = from.name(),
                dead_letter_queue = target,
                id = %entry.message.id(),
                "dead-letter queue does not exist: message discarded"
            ),
        }
    }

    pub fn close(&self) {
        self.closed.close();
        for queue in self.read().queues.values() {
            queue.readable().notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_the_only_limit_a_send_is_held_to() {
        // A send's check compares the length alone only while this holds: anything else the
        // capability check could refuse a message for would need the whole check.
        let broker = Broker::new(MemoryConfig {
            max_message_size: 100,
            ..MemoryConfig::default()
        });
        assert_eq!(broker.size_limit_only, Some(100));
    }
}
