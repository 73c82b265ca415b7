//! Declaring exchanges, queues and bindings on the in-memory broker.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::operation::{
    BIND, DECLARE_EXCHANGE, DECLARE_QUEUE, DELETE_EXCHANGE, DELETE_QUEUE, QUEUE_DEPTH, UNBIND,
};
use mailroom_core::{Binding, Error, ExchangeSpec, QueueSpec, Result, Topology};

use crate::backend::MemoryBackend;
use crate::broker::ExchangeState;
use crate::error::{conflict, context};
use crate::queue::Queue;

#[async_trait]
impl Topology for MemoryBackend {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        let op = DECLARE_EXCHANGE;
        self.broker.check_open(op)?;
        let mut declared = self.broker.write();
        match declared.exchanges.get(&spec.name) {
            Some(existing) if existing.kind != spec.kind || existing.durable != spec.durable => {
                Err(conflict(
                    format!(
                        "exchange '{}' exists as {} (durable={}), declared now as {} (durable={})",
                        spec.name, existing.kind, existing.durable, spec.kind, spec.durable
                    ),
                    op,
                ))
            }
            Some(_) => Ok(()),
            None => {
                declared.exchanges.insert(
                    spec.name.clone(),
                    ExchangeState {
                        kind: spec.kind,
                        durable: spec.durable,
                        bindings: Vec::new(),
                    },
                );
                Ok(())
            }
        }
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.broker.check_open(DELETE_EXCHANGE)?;
        self.broker.write().exchanges.remove(name);
        Ok(())
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()> {
        let op = DECLARE_QUEUE;
        self.broker.check_open(op)?;
        if !spec.extra.is_empty() {
            let keys = spec.extra.keys().collect::<Vec<_>>();
            return Err(context(
                Error::config(format!(
                    "the memory backend takes no backend-specific queue settings, got {keys:?}"
                )),
                op,
            ));
        }
        let mut declared = self.broker.write();
        match declared.queues.get(&spec.name) {
            Some(existing) if existing.spec != *spec => Err(conflict(
                format!(
                    "queue '{}' exists with different settings ({:?}); delete it first or \
                     declare it the same way",
                    spec.name, existing.spec
                ),
                op,
            )),
            Some(_) => Ok(()),
            None => {
                declared
                    .queues
                    .insert(spec.name.clone(), Arc::new(Queue::new(spec.clone())));
                Ok(())
            }
        }
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.broker.check_open(DELETE_QUEUE)?;
        let removed = {
            let mut declared = self.broker.write();
            for exchange in declared.exchanges.values_mut() {
                exchange.bindings.retain(|(_, q)| q != name);
            }
            declared.queues.remove(name)
        };
        if let Some(queue) = removed {
            queue.mark_deleted();
            let dropped = queue.purge();
            tracing::debug!(queue = name, dropped, "queue deleted");
        }
        Ok(())
    }

    async fn bind(&self, binding: &Binding) -> Result<()> {
        let op = BIND;
        self.broker.check_open(op)?;
        let mut declared = self.broker.write();
        if !declared.queues.contains_key(&binding.queue) {
            let missing = format!("cannot bind: queue '{}' does not exist", binding.queue);
            return Err(context(Error::not_found(missing), op));
        }
        let exchange = declared
            .exchanges
            .get_mut(&binding.exchange)
            .ok_or_else(|| {
                let missing = format!(
                    "cannot bind: exchange '{}' does not exist",
                    binding.exchange
                );
                context(Error::not_found(missing), op)
            })?;
        if !binding.route.fits(exchange.kind) {
            let wrong = format!(
                "a {:?} route cannot bind to {} exchange '{}'",
                binding.route, exchange.kind, binding.exchange
            );
            return Err(context(Error::invalid_input(wrong), op));
        }
        let entry = (binding.route.clone(), binding.queue.clone());
        if !exchange.bindings.contains(&entry) {
            exchange.bindings.push(entry);
        }
        Ok(())
    }

    async fn unbind(&self, binding: &Binding) -> Result<()> {
        self.broker.check_open(UNBIND)?;
        if let Some(exchange) = self.broker.write().exchanges.get_mut(&binding.exchange) {
            exchange
                .bindings
                .retain(|(route, queue)| !(route == &binding.route && queue == &binding.queue));
        }
        Ok(())
    }

    async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        self.broker.check_open(QUEUE_DEPTH)?;
        // Ready only, as the other brokers count: delayed and unacked messages are not waiting
        // for a consumer yet (or any more).
        Ok(Some(MemoryBackend::queue_depth(self, queue)?.ready as u64))
    }
}
