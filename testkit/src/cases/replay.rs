//! Replay: a consumer reading from the earliest position sees acked messages again.

use super::{cleanup, consumer, ensure_all_seen, fresh_queue, numbered, receive, send_all};
use crate::{Fixture, Tally};
use mailroom_core::{ConsumerOptions, Destination, Replay, Result};

pub(super) async fn replay_from_earliest(fixture: Fixture) -> Result<String> {
    const N: usize = 20;
    let q = fresh_queue(&fixture, "q").await?;
    let sent = numbered(N, "replay")?;
    let producer = fixture.backend.producer().await?;
    send_all(producer.as_ref(), &Destination::queue(&q), &sent).await?;
    let mut first = consumer(&fixture, &q).await?;
    let mut acked = Tally::new();
    while acked.unique() < N {
        let d = receive(&mut first, "every message, before the replay").await?;
        acked.record(d.message().id());
        d.ack().await?;
    }
    first.close().await?;
    let mut replaying = fixture
        .backend
        .consumer(&q, ConsumerOptions::default().replay(Replay::Earliest))
        .await?;
    let mut again = Tally::new();
    while again.unique() < N {
        let d = receive(&mut replaying, "every acked message again, replayed").await?;
        again.record(d.message().id());
        d.ack().await?;
    }
    replaying.close().await?;
    ensure_all_seen(&again, &sent, "replay from the earliest position")?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!(
        "{N} sent and acked, all {N} read again from the earliest position"
    ))
}
