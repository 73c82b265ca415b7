//! Transactions: outputs and consumed inputs commit or abort as one.

use super::{
    cleanup, consumer, ensure_all_seen, expect_quiet, fresh_queue, numbered, receive, send_all,
    QUIET, WAIT,
};
use crate::{check_failed, ensure, Fixture, Tally};
use mailroom_core::{Destination, Message, Result, TransactionOptions};

pub(super) async fn transaction_commits_or_aborts_as_one(fixture: Fixture) -> Result<String> {
    const N: usize = 5;
    let input = fresh_queue(&fixture, "in").await?;
    let output = fresh_queue(&fixture, "out").await?;
    let sent = numbered(N, "tx")?;
    let producer = fixture.backend.producer().await?;
    send_all(producer.as_ref(), &Destination::queue(&input), &sent).await?;
    let mut reader = consumer(&fixture, &output).await?;
    let mut unit = fixture
        .backend
        .transactional(&input, TransactionOptions::new(fixture.name("tx")))
        .await?;
    let out = Destination::queue(&output);
    let transform = |m: &Message, phase: &str| {
        Message::builder(m.payload().clone())
            .header("phase", phase)
            .build()
    };

    // Abort: nothing of it may reach the reader, and the same inputs come back.
    let mut first = Tally::new();
    while first.unique() < N {
        let input = unit
            .receive_timeout(WAIT)
            .await?
            .ok_or_else(|| check_failed("no input within the wait, before the abort"))?;
        first.record(input.message.id());
        unit.send(&out, transform(&input.message, "aborted")?)
            .await?;
    }
    // A send may only hand the output to the client's batcher; waiting lets it reach the
    // broker's log, so the abort has written records to hide instead of dropping them unsent.
    tokio::time::sleep(QUIET).await;
    unit.abort().await?;
    expect_quiet(&mut reader, "an aborted transaction's output").await?;

    // Commit: the same inputs again, each output received exactly once.
    let mut again = Tally::new();
    while again.unique() < N {
        let input = unit
            .receive_timeout(WAIT)
            .await?
            .ok_or_else(|| check_failed("the aborted inputs did not come back"))?;
        again.record(input.message.id());
        unit.send(&out, transform(&input.message, "committed")?)
            .await?;
    }
    ensure_all_seen(&again, &sent, "inputs after the abort")?;
    let counts = unit.commit().await?;
    let mut outputs = Tally::new();
    while outputs.unique() < N {
        let d = receive(&mut reader, "a committed transaction's output").await?;
        ensure(
            d.message().headers().get("phase") == Some("committed"),
            || {
                format!(
                    "received an output of the aborted transaction: {}",
                    d.message().id()
                )
            },
        )?;
        outputs.record(d.message().id());
        d.ack().await?;
    }
    expect_quiet(&mut reader, "a second copy of a committed output").await?;
    unit.close().await?;

    // The committed inputs are consumed: a new unit on the same queue gets none of them.
    let mut next = fixture
        .backend
        .transactional(&input, TransactionOptions::new(fixture.name("tx")))
        .await?;
    if let Some(left) = next.receive_timeout(QUIET).await? {
        return Err(check_failed(format!(
            "input {} was received again after its transaction committed",
            left.message.id()
        )));
    }
    next.close().await?;
    reader.close().await?;
    cleanup(&fixture, &[&input, &output], &[]).await;
    Ok(format!(
        "{N} inputs: aborted once (0 outputs seen, inputs back), then committed ({} in, {} out, each output once)",
        counts.inputs, counts.outputs
    ))
}
