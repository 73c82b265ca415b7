//! A flow of batches to one sink: each batch in one `send_batch`, retried as the stage's
//! policy says; its inputs are settled once every message of it is confirmed.

use std::sync::Arc;

use futures_util::stream::{BoxStream, StreamExt};
use mailroom_core::{Error, ErrorKind, Message};

use super::Sink;
use crate::flow::{Item, Step};
use crate::metrics::add;
use crate::stage::RunningStage;

/// Each batch to one sink in one `send_batch`, retried as the stage's policy says.
pub(super) async fn drive_batches(
    mut stream: BoxStream<'static, Step<Vec<Message>>>,
    stage: Arc<RunningStage>,
    sink: Sink,
) -> Result<(), Error> {
    while let Some(step) = stream.next().await {
        let Item { value, meta } = step?;
        add(&stage.counters.input, 1);
        let mut pending = value;
        let mut attempt = 1;
        loop {
            let kept = stage.policy.backoff().map(|_| pending.clone());
            let count = pending.len() as u64;
            let results = sink
                .producer
                .send_batch(&sink.destination, pending)
                .await
                .map(|results| results.into_iter().collect::<Vec<_>>());
            let mut retry = Vec::new();
            let mut error = None;
            match results {
                Ok(results) if results.len() as u64 != count => {
                    // As in `drive_one`: results that cannot be matched to messages settle
                    // nothing. Dropping the tokens releases the batch's inputs.
                    add(&stage.counters.errors, count);
                    drop(meta);
                    return Err(Error::new(
                        ErrorKind::Broker,
                        format!(
                            "sink '{}': the producer answered for {} of the {count} messages \
                             of a batch; the batch's inputs are released for redelivery",
                            stage.name,
                            results.len()
                        ),
                    ));
                }
                Ok(results) => {
                    for (i, r) in results.into_iter().enumerate() {
                        if let Err(e) = r {
                            if let Some(m) = kept.as_ref().and_then(|k| k.get(i)) {
                                retry.push(m.clone());
                            }
                            error.get_or_insert(e);
                        }
                    }
                }
                Err(e) => {
                    retry = kept.clone().unwrap_or_default();
                    error = Some(e);
                }
            }
            let Some(e) = error else {
                add(&stage.counters.output, 1);
                add(&stage.pipeline.out, count);
                meta.tokens.done().await;
                break;
            };
            match stage.retry_delay(&e, attempt) {
                Some(delay) if !retry.is_empty() => {
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    pending = retry;
                }
                _ => {
                    if let Some(e) = stage.give_up(meta.tokens, e, attempt).await {
                        return Err(e);
                    }
                    break;
                }
            }
        }
    }
    sink.producer.flush().await
}
