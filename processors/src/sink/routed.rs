//! Fan-out and routing: every message to each sink, or to the one a function picks; an input
//! is settled once every output made from it is confirmed.

use std::sync::Arc;
use std::task::Poll;

use futures_util::stream::{BoxStream, StreamExt};
use mailroom_core::{Error, Message};

use super::confirm::{settle_enqueued, Confirms};
use super::pacer::Pacer;
use super::{Router, Sink};
use crate::flow::{Item, Step};
use crate::metrics::add;
use crate::stage::RunningStage;
use crate::token::Tokens;

/// Every message to each sink, or to the one the router picks: one send per message and sink,
/// each input settled once every output made from it is confirmed.
pub(crate) async fn drive_routed(
    mut stream: BoxStream<'static, Step<Message>>,
    stage: Arc<RunningStage>,
    sinks: Vec<Sink>,
    router: Router,
) -> Result<(), Error> {
    let mut confirms = Confirms::new();
    let mut pacer = Pacer::new();
    loop {
        // The next item, collecting finished confirms first (a failed one stops the
        // pipeline) and while waiting for it.
        let next = std::future::poll_fn(|cx| {
            while !confirms.is_empty() {
                match confirms.poll_next_unpin(cx) {
                    Poll::Ready(Some(Some(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(None)) => {}
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            stream.poll_next_unpin(cx)
        })
        .await;
        match next {
            Some(Ok(item)) => dispatch(&stage, &sinks, &router, item, &mut confirms).await?,
            Some(Err(e)) => return Err(e),
            None => break,
        }
        pacer.passed(1).await;
    }
    while let Some(failed) = confirms.next().await {
        if let Some(e) = failed {
            return Err(e);
        }
    }
    for sink in &sinks {
        sink.producer.flush().await?;
    }
    Ok(())
}

async fn dispatch(
    stage: &Arc<RunningStage>,
    sinks: &[Sink],
    router: &Router,
    item: Item<Message>,
    confirms: &mut Confirms,
) -> Result<(), Error> {
    add(&stage.counters.input, 1);
    let Item { value, meta } = item;
    match router {
        Router::All if sinks.len() == 1 => {
            send(stage, &sinks[0], value, meta.tokens, confirms).await;
        }
        Router::All => {
            let last = sinks.len() - 1;
            let mut tokens = Some(meta.tokens);
            for (i, sink) in sinks.iter().enumerate() {
                let t = if i == last {
                    tokens.take()
                } else {
                    tokens.as_mut().map(Tokens::fork)
                };
                if let Some(t) = t {
                    send(stage, sink, value.clone(), t, confirms).await;
                }
            }
        }
        Router::By(route) => {
            let _entered = stage.span.enter();
            let picked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(&value)));
            drop(_entered);
            match picked {
                Ok(Some(i)) if i < sinks.len() => {
                    send(stage, &sinks[i], value, meta.tokens, confirms).await;
                }
                Ok(Some(i)) => {
                    return Err(Error::config(format!(
                        "stage '{}': the router picked sink {i}, but there are only {}",
                        stage.name,
                        sinks.len()
                    )));
                }
                Ok(None) => {
                    add(&stage.counters.filtered, 1);
                    add(&stage.pipeline.filtered, meta.tokens.len() as u64);
                    meta.tokens.done().await;
                }
                Err(panic) => {
                    let error = crate::stage::panic_error(&stage.name, panic);
                    if let Some(e) = stage.give_up(meta.tokens, error, 1).await {
                        return Err(e);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Enqueue one message; settle its tokens now when the confirm is already known, else when it
/// arrives (tracked in `confirms`).
///
/// No copy of the message is kept for a retry: a producer hands an unconfirmed message back
/// inside the error (the `Producer` contract, `Error::undelivered`), and a failure that does not
/// return it is given up to the stage's policy (the input is then redelivered or dead-lettered,
/// never lost).
async fn send(
    stage: &Arc<RunningStage>,
    sink: &Sink,
    message: Message,
    tokens: Tokens,
    confirms: &mut Confirms,
) {
    let enqueued = sink.producer.enqueue(&sink.destination, message).await;
    settle_enqueued(stage, sink, enqueued, tokens, confirms).await;
}
