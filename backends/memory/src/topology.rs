//! Declaring exchanges, queues and bindings on the in-memory broker.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom_core::{
    Binding, Capability, Error, ErrorKind, ExchangeSpec, QueueSpec, Result, Topology,
};

use crate::backend::{ExchangeState, MemoryBackend};
use crate::queue::Queue;
use crate::BACKEND;

fn conflict(message: String, operation: &'static str) -> Error {
    Error::new(ErrorKind::Conflict, message)
        .with_backend(BACKEND)
        .with_operation(operation)
}

#[async_trait]
impl Topology for MemoryBackend {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        let op = "declare_exchange";
        self.broker.check_open(op)?;
        spec.validate()
            .map_err(|e| e.with_backend(BACKEND).with_operation(op))?;
        self.broker
            .capabilities
            .require(Capability::Exchange(spec.kind), BACKEND, op)?;
        let mut topo = self.broker.write();
        match topo.exchanges.get(&spec.name) {
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
                topo.exchanges.insert(
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
        self.broker.check_open("delete_exchange")?;
        self.broker.write().exchanges.remove(name);
        Ok(())
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<()> {
        let op = "declare_queue";
        self.broker.check_open(op)?;
        spec.validate()
            .map_err(|e| e.with_backend(BACKEND).with_operation(op))?;
        let caps = &self.broker.capabilities;
        if spec.dead_letter_queue.is_some() {
            caps.require(Capability::DeadLetter, BACKEND, op)?;
        }
        if spec.max_delivery_attempts.is_some() {
            caps.require(Capability::MaxDeliveryAttempts, BACKEND, op)?;
        }
        if !spec.extra.is_empty() {
            return Err(Error::config(format!(
                "the memory backend takes no backend-specific queue settings, got {:?}",
                spec.extra.keys().collect::<Vec<_>>()
            ))
            .with_backend(BACKEND)
            .with_operation(op));
        }
        let mut topo = self.broker.write();
        match topo.queues.get(&spec.name) {
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
                topo.queues
                    .insert(spec.name.clone(), Arc::new(Queue::new(spec.clone())));
                Ok(())
            }
        }
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.broker.check_open("delete_queue")?;
        let removed = {
            let mut topo = self.broker.write();
            for exchange in topo.exchanges.values_mut() {
                exchange.bindings.retain(|(_, q)| q != name);
            }
            topo.queues.remove(name)
        };
        if let Some(queue) = removed {
            queue.mark_deleted();
            let dropped = queue.purge();
            tracing::debug!(queue = name, dropped, "queue deleted");
        }
        Ok(())
    }

    async fn bind(&self, binding: &Binding) -> Result<()> {
        let op = "bind";
        self.broker.check_open(op)?;
        binding
            .validate()
            .map_err(|e| e.with_backend(BACKEND).with_operation(op))?;
        let mut topo = self.broker.write();
        if !topo.queues.contains_key(&binding.queue) {
            return Err(Error::not_found(format!(
                "cannot bind: queue '{}' does not exist",
                binding.queue
            ))
            .with_backend(BACKEND)
            .with_operation(op));
        }
        let exchange = topo.exchanges.get_mut(&binding.exchange).ok_or_else(|| {
            Error::not_found(format!(
                "cannot bind: exchange '{}' does not exist",
                binding.exchange
            ))
            .with_backend(BACKEND)
            .with_operation(op)
        })?;
        if !binding.route.fits(exchange.kind) {
            return Err(Error::invalid_input(format!(
                "a {:?} route cannot bind to {} exchange '{}'",
                binding.route, exchange.kind, binding.exchange
            ))
            .with_backend(BACKEND)
            .with_operation(op));
        }
        let entry = (binding.route.clone(), binding.queue.clone());
        if !exchange.bindings.contains(&entry) {
            exchange.bindings.push(entry);
        }
        Ok(())
    }

    async fn unbind(&self, binding: &Binding) -> Result<()> {
        self.broker.check_open("unbind")?;
        if let Some(exchange) = self.broker.write().exchanges.get_mut(&binding.exchange) {
            exchange
                .bindings
                .retain(|(route, queue)| !(route == &binding.route && queue == &binding.queue));
        }
        Ok(())
    }
}
