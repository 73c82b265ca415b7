//! Delivery guarantees: every level a backend declares opens a producer whose sends arrive in
//! the normal case, and every level it does not declare is refused, named, before any send.

use super::{cleanup, consumer, drain, ensure_all_seen, fresh_queue, numbered};
use crate::{check_failed, ensure, Fixture};
use mailroom_core::{DeliveryGuarantee, Destination, ErrorKind, ProducerOptions, Result};

/// Messages sent per weaker level: enough to fill a confirm window, few enough to stay quick.
const N: usize = 2_000;

/// Send `N` messages at `level` and receive every one: a weaker guarantee gives up the news of
/// a loss, not delivery itself. Under `Unconfirmed` no receipt may claim an offset.
async fn sends_arrive(fixture: Fixture, level: DeliveryGuarantee) -> Result<String> {
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture
        .backend
        .producer_with(ProducerOptions::default().guarantee(level))
        .await?;
    let sent = numbered(N, level.as_str())?;
    let results = producer
        .send_batch(&Destination::queue(&q), sent.clone())
        .await?;
    ensure(results.len() == N, || {
        format!("send_batch returned {} results for {N}", results.len())
    })?;
    for (i, result) in results.into_iter().enumerate() {
        let receipt = result.map_err(|e| check_failed(format!("{level} send {i} failed: {e}")))?;
        if !level.broker_answers() {
            ensure(receipt.offset.is_none(), || {
                format!(
                    "an {level} receipt claims offset {:?}: the broker never said so",
                    receipt.offset
                )
            })?;
        }
    }
    producer.close().await?;
    let mut c = consumer(&fixture, &q).await?;
    let tally = drain(&mut c, N).await?;
    ensure_all_seen(&tally, &sent, level.as_str())?;
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!("{level}: {tally}"))
}

pub(super) async fn unconfirmed_sends_arrive(fixture: Fixture) -> Result<String> {
    sends_arrive(fixture, DeliveryGuarantee::Unconfirmed).await
}

pub(super) async fn leader_confirmed_sends_arrive(fixture: Fixture) -> Result<String> {
    sends_arrive(fixture, DeliveryGuarantee::LeaderConfirmed).await
}

pub(super) async fn levels_not_declared_are_refused(fixture: Fixture) -> Result<String> {
    let offered = fixture.backend.capabilities().delivery_guarantees;
    let mut refused = Vec::new();
    for level in DeliveryGuarantee::ALL {
        let opened = fixture
            .backend
            .producer_with(ProducerOptions::default().guarantee(level))
            .await;
        match (opened, offered.contains(level)) {
            (Ok(producer), true) => producer.close().await?,
            (Err(e), true) => {
                return Err(check_failed(format!(
                    "declared level {level} did not open a producer: {e}"
                )))
            }
            (Ok(_), false) => {
                return Err(check_failed(format!(
                    "level {level} is not declared but a producer opened with it"
                )))
            }
            (Err(e), false) => {
                ensure(
                    e.kind() == ErrorKind::Unsupported && e.message().contains(level.as_str()),
                    || {
                        format!(
                            "level {level} refused with {:?}, not Unsupported naming it: {e}",
                            e.kind()
                        )
                    },
                )?;
                refused.push(level.as_str());
            }
        }
    }
    Ok(format!(
        "offered: {offered}; refused: {}",
        refused.join(", ")
    ))
}
