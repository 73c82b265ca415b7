//! Declared absences: every absent capability with an API is Unsupported before any I/O.

use crate::{check_failed, Fixture};
use mailroom_core::{
    Capability, ConsumerOptions, Destination, ErrorKind, ExchangeKind, ExchangeSpec, Message,
    Overflow, QueueSpec, Replay, Result, TransactionOptions,
};
use std::time::Duration;

pub(super) async fn absent_capability_is_unsupported(fixture: Fixture) -> Result<String> {
    let caps = fixture.backend.capabilities().clone();
    let topo = fixture.backend.topology();
    let missing_q = fixture.name("never-declared");
    let dlq = fixture.name("never-declared-dlq");
    let mut probed = Vec::new();
    let expect_unsupported = |what: Capability, result: Result<()>| -> Result<()> {
        match result {
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(()),
            other => Err(check_failed(format!(
                "{what} is declared absent, but using it gave {other:?} instead of Unsupported"
            ))),
        }
    };
    if !caps.replay {
        let r = fixture
            .backend
            .consumer(
                &missing_q,
                ConsumerOptions::default().replay(Replay::Earliest),
            )
            .await
            .map(drop);
        expect_unsupported(Capability::Replay, r)?;
        probed.push(Capability::Replay);
    }
    if !caps.delayed_delivery {
        let producer = fixture.backend.producer().await?;
        let m = Message::builder("x")
            .delay(Duration::from_secs(1))
            .build()?;
        let r = producer
            .send(&Destination::queue(&missing_q), m)
            .await
            .map(drop);
        expect_unsupported(Capability::DelayedDelivery, r)?;
        probed.push(Capability::DelayedDelivery);
    }
    if !caps.transactions {
        let r = fixture
            .backend
            .transactional(&missing_q, TransactionOptions::new(fixture.name("tx")))
            .await
            .map(drop);
        expect_unsupported(Capability::Transactions, r)?;
        probed.push(Capability::Transactions);
    }
    for kind in ExchangeKind::ALL {
        let cap = Capability::Exchange(kind);
        if !caps.supports(cap) {
            let r = topo
                .declare_exchange(&ExchangeSpec::new(fixture.name("ex"), kind))
                .await;
            expect_unsupported(cap, r)?;
            probed.push(cap);
        }
    }
    let queue_probes: [(Capability, QueueSpec); 4] = [
        (
            Capability::DeadLetter,
            QueueSpec::new(&missing_q).dead_letter_queue(&dlq),
        ),
        (
            Capability::MaxDeliveryAttempts,
            QueueSpec::new(&missing_q).max_delivery_attempts(3),
        ),
        (
            Capability::MaxQueueLength,
            QueueSpec::new(&missing_q).max_length(10, Overflow::Reject),
        ),
        (
            Capability::MessageTtl,
            QueueSpec::new(&missing_q).message_ttl(Duration::from_secs(60)),
        ),
    ];
    for (cap, spec) in queue_probes {
        if !caps.supports(cap) {
            expect_unsupported(cap, topo.declare_queue(&spec).await)?;
            probed.push(cap);
        }
    }
    if probed.is_empty() {
        return Ok("every capability with an API is declared present: nothing to probe".into());
    }
    let names: Vec<&str> = probed.iter().map(|c| c.name()).collect();
    Ok(format!("probed {}", names.join(", ")))
}
