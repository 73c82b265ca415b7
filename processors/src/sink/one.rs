//! The common shape, every message to one sink: what the stages have ready goes to the
//! producer in one `enqueue_batch`, and each input is settled once its message is confirmed.

use std::sync::Arc;
use std::task::Poll;

use futures_util::stream::{BoxStream, StreamExt};
use mailroom_core::{Error, ErrorKind, Message};

use super::confirm::{count_output, enqueued_now, Confirms};
use super::pacer::Pacer;
use super::{give_trace, Sink};
use crate::flow::{Item, Meta, Step};
use crate::metrics::add;
use crate::stage::RunningStage;
use crate::token::{Tally, Tokens};

/// Most messages handed to a sink in one `enqueue_batch`.
///
/// Small on purpose: every input of a batch holds its delivery's allocations until the batch
/// is confirmed, and glibc's per-thread cache keeps only 7 freed blocks of a size, so with 64
/// most of each batch's allocations and frees took malloc's slow path. Callgrind on the
/// memory → map → memory bench: 2877 instructions per message with 64, 2860 with 16, 2778
/// with 8; 8 still makes one producer call of eight.
const SINK_BATCH: usize = 8;

/// The common shape, every message to one sink: whatever the stages have ready (up to
/// [`SINK_BATCH`]) goes to the producer in one `enqueue_batch`, which costs a backend that
/// takes batches (one lock, one call) far less than a call per message. Nothing waits to fill
/// a batch: it holds only what was already there, so latency does not grow.
pub(super) async fn drive_one(
    mut stream: BoxStream<'static, Step<Message>>,
    stage: Arc<RunningStage>,
    sink: Sink,
) -> Result<(), Error> {
    let mut confirms = Confirms::new();
    let mut pacer = Pacer::new();
    // Reused from batch to batch: nothing is allocated per batch.
    let mut values = Vec::with_capacity(SINK_BATCH);
    let mut tokens = Vec::with_capacity(SINK_BATCH);
    let mut pending = Vec::with_capacity(SINK_BATCH);
    // Set when the stream ended (`None`) or failed (`Some`): what was gathered before it is
    // still sent.
    let mut end: Option<Option<Error>> = None;
    while end.is_none() {
        // Finished confirms first (a failed one stops the pipeline), then every ready item.
        let polled = std::future::poll_fn(|cx| {
            while !confirms.is_empty() {
                match confirms.poll_next_unpin(cx) {
                    Poll::Ready(Some(Some(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(Some(None)) => {}
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            while values.len() < SINK_BATCH {
                match stream.poll_next_unpin(cx) {
                    // Only the fields used are moved out of the item (it is a few hundred
                    // bytes; a whole copy per message is measurable).
                    Poll::Ready(Some(Ok(Item {
                        mut value,
                        meta:
                            Meta {
                                tokens: t, trace, ..
                            },
                    }))) => {
                        // As `carry_trace` does for the other sink shapes.
                        if let Some(trace) = &trace {
                            give_trace(trace, &mut value);
                        }
                        values.push(value);
                        tokens.push(t);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        end = Some(Some(e));
                        break;
                    }
                    Poll::Ready(None) => {
                        end = Some(None);
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if values.is_empty() && end.is_none() {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        })
        .await;
        polled?;
        let n = values.len();
        if n == 0 {
            break;
        }
        add(&stage.counters.input, n as u64);
        if n == 1 {
            let Some(value) = values.pop() else { break };
            pending.push(sink.producer.enqueue(&sink.destination, value).await);
        } else {
            sink.producer
                .enqueue_batch(&sink.destination, &mut values, &mut pending)
                .await;
        }
        if pending.len() != n {
            // Results can no longer be matched to inputs, so none is acked: settling by
            // position could ack an input whose output was never sent. The inputs are
            // released for redelivery (duplicates of what was sent, no loss), and the
            // pipeline stops, since a producer that breaks the batch contract once may
            // break it on every batch.
            add(&stage.counters.errors, n as u64);
            let answered = pending.len();
            pending.clear();
            tokens.clear();
            return Err(Error::new(
                ErrorKind::Broker,
                format!(
                    "sink '{}': the producer answered for {answered} of the {n} messages it \
                     was given; the batch's inputs are released for redelivery",
                    stage.name
                ),
            ));
        }
        // The batch's acks reach the shared counters (and their slots the source) together,
        // flushed before anything that waits.
        let mut tally = Tally::new(&stage.in_flight);
        for (enqueued, t) in pending.drain(..).zip(tokens.drain(..)) {
            if let Some(t) = enqueued_now(&stage, &sink, enqueued, t, &mut confirms) {
                count_output(&stage);
                // Settled in place, without a future per layer: the usual single input.
                match t {
                    Tokens::One(t) => {
                        if let Some(job) = t.done_now(&mut tally) {
                            tally.flush();
                            job.run().await;
                        }
                    }
                    many => {
                        tally.flush();
                        many.done().await;
                    }
                }
            }
        }
        drop(tally);
        values.clear();
        pacer.passed(n as u32).await;
    }
    if let Some(Some(e)) = end {
        return Err(e);
    }
    while let Some(failed) = confirms.next().await {
        if let Some(e) = failed {
            return Err(e);
        }
    }
    sink.producer.flush().await
}
