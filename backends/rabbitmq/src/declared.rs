//! What this backend declared: recorded by `topology.rs`, consulted by producers, consumers and
//! settles (which queues are quorum queues, where a queue dead-letters to, which overflow), and
//! replayed on every new connection after a broker restart.

use std::collections::HashMap;
use std::sync::Arc;

use lapin::Channel;
use mailroom_core::{Binding, ExchangeSpec, QueueSpec};

use crate::bounded::{Deadline, Failure, Lost};
use crate::connection::{Connection, Link};

/// What this backend declared, replayed after a reconnect and consulted by producers and
/// consumers (which queues are quorum queues, where a queue dead-letters to, which overflow).
#[derive(Default)]
pub(crate) struct Declared {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: HashMap<String, QueueSpec>,
    /// Queue names in declaration order, so dead-letter targets are re-declared first.
    pub queue_order: Vec<String>,
    pub bindings: Vec<Binding>,
}

/// What a consumer or producer needs to know about a queue this backend declared.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueSettings {
    pub quorum: bool,
    pub dead_letter_queue: Option<String>,
    pub max_length: Option<(u64, mailroom_core::Overflow)>,
    /// A stream queue: read from an offset, no nack, the group's position stored client-side.
    pub stream: bool,
}

impl Connection {
    /// What this backend knows about `queue`: defaults for a queue it did not declare (a
    /// stream when the backend's queue type is `stream`).
    pub fn queue_settings(&self, queue: &str) -> QueueSettings {
        let default = self.config.queue_type;
        let declared = self.declared();
        match declared.queues.get(queue) {
            Some(spec) => QueueSettings {
                quorum: crate::topology::is_quorum(spec),
                dead_letter_queue: spec.dead_letter_queue.clone(),
                max_length: spec.max_length.map(|m| (m, spec.overflow)),
                stream: crate::topology::is_stream(spec, default),
            },
            None => QueueSettings {
                stream: default == crate::config::QueueType::Stream,
                ..QueueSettings::default()
            },
        }
    }

    /// Re-declare what this backend declared, each step bounded. A declaration the broker
    /// refuses is logged and skipped (it closed that channel; the rest go on a new one); a
    /// connection that breaks or does not answer fails the replay, so the caller tries another.
    pub(crate) async fn replay_topology(
        &self,
        live: &Arc<Link>,
        deadline: Deadline,
    ) -> std::result::Result<(), Lost> {
        let (exchanges, queues, bindings) = {
            let r = self.declared();
            let queues: Vec<QueueSpec> = r
                .queue_order
                .iter()
                .filter_map(|n| r.queues.get(n).cloned())
                .collect();
            (r.exchanges.clone(), queues, r.bindings.clone())
        };
        let mut channel: Option<Channel> = None;
        for spec in &exchanges {
            let ch = self.replay_channel(&mut channel, live, deadline).await?;
            let r = crate::topology::declare_exchange_on(&ch, spec);
            let r = self.answer(live, deadline, "exchange.declare", r).await;
            note(r, || format!("exchange {}", spec.name), &mut channel)?;
        }
        for spec in &queues {
            let Ok(args) = crate::topology::queue_arguments(spec, self.config.queue_type) else {
                continue;
            };
            let ch = self.replay_channel(&mut channel, live, deadline).await?;
            let r = crate::topology::declare_queue_on(&ch, spec, args);
            let r = self.answer(live, deadline, "queue.declare", r).await;
            note(r, || format!("queue {}", spec.name), &mut channel)?;
        }
        for binding in &bindings {
            let ch = self.replay_channel(&mut channel, live, deadline).await?;
            let r = crate::topology::bind_on(&ch, binding);
            let r = self.answer(live, deadline, "queue.bind", r).await;
            note(
                r,
                || format!("binding of {} to {}", binding.queue, binding.exchange),
                &mut channel,
            )?;
        }
        Ok(())
    }

    /// The replay's channel, opened when there is none yet or the last one was closed.
    async fn replay_channel(
        &self,
        slot: &mut Option<Channel>,
        live: &Arc<Link>,
        deadline: Deadline,
    ) -> std::result::Result<Channel, Lost> {
        if let Some(ch) = slot.as_ref() {
            return Ok(ch.clone());
        }
        let open = live.conn.create_channel();
        match self.answer(live, deadline, "channel.open", open).await {
            Ok(ch) => {
                *slot = Some(ch.clone());
                Ok(ch)
            }
            Err(Failure::Lost(lost)) => Err(lost),
            Err(Failure::Refused(e)) => Err(Lost {
                why: format!("channel.open refused: {e}"),
                silent: false,
            }),
        }
    }
}

fn note(
    result: std::result::Result<(), Failure>,
    what: impl FnOnce() -> String,
    channel: &mut Option<Channel>,
) -> std::result::Result<(), Lost> {
    match result {
        Ok(()) => Ok(()),
        Err(Failure::Refused(e)) => {
            tracing::warn!(error = %e, what = what(), "could not re-declare after reconnect");
            // A refused declaration closes the channel; the rest need a new one.
            *channel = None;
            Ok(())
        }
        Err(Failure::Lost(lost)) => Err(lost),
    }
}
