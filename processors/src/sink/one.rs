//! The common shape, every message to one sink: each ready message goes to the producer at
//! once where it takes it without waiting, else what the stages have ready goes in one
//! `enqueue_batch`; each input is settled once its message is confirmed.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{BoxStream, StreamExt};
use mailroom_core::{Error, ErrorKind, Message, PendingConfirm, TryEnqueue};

use super::confirm::{count_output, enqueued_now, Confirms};
use super::pacer::Pacer;
use super::{give_trace, Sink};
use crate::flow::{Item, Meta, Step};
use crate::metrics::{add, bump};
use crate::stage::RunningStage;
use crate::token::{SettleJob, Tally, Tokens};

/// Most messages handed to a sink in one `enqueue_batch`, and most sent one by one between two
/// looks at the pacer.
///
/// Small on purpose: every input of a batch holds its delivery's allocations until the batch
/// is confirmed, and glibc's per-thread cache keeps only 7 freed blocks of a size, so with 64
/// most of each batch's allocations and frees took malloc's slow path. Callgrind on the
/// memory → map → memory bench: 2877 instructions per message with 64, 2860 with 16, 2778
/// with 8; 8 still makes one producer call of eight.
const SINK_BATCH: usize = 8;

/// The common shape, every message to one sink.
///
/// A producer that takes a message without waiting ([`try_enqueue`](mailroom_core::Producer::try_enqueue),
/// the memory broker) gets each one as soon as it is ready, and its input is settled right
/// there: one message at a time from source to ack, as a hand-written loop does, without a
/// future or a batch in between. Otherwise whatever the stages have ready (up to
/// [`SINK_BATCH`]) goes to the producer in one `enqueue_batch`, which costs a backend that
/// takes batches (one lock, one call) far less than a call per message. Nothing waits to fill
/// a batch: it holds only what was already there, so latency does not grow.
pub(super) async fn drive_one(
    stream: BoxStream<'static, Step<Message>>,
    stage: Arc<RunningStage>,
    sink: Sink,
) -> Result<(), Error> {
    let mut one = OneSink {
        stream,
        stage,
        sink,
        confirms: Confirms::new(),
        // Reused from batch to batch: nothing is allocated per batch.
        values: Vec::with_capacity(SINK_BATCH),
        tokens: Vec::with_capacity(SINK_BATCH),
        pending: Vec::with_capacity(SINK_BATCH),
        end: None,
    };
    let mut pacer = Pacer::new();
    while one.end.is_none() {
        let went = match std::future::poll_fn(|cx| one.pump(cx)).await? {
            Pumped::Went(n) => n,
            Pumped::Settle(job, n) => {
                job.run().await;
                n
            }
            Pumped::SettleMany(tokens, n) => {
                tokens.done().await;
                n
            }
        };
        let batch = one.values.len() as u32;
        if batch > 0 {
            one.send_batch().await?;
        }
        pacer.passed(went + batch).await;
    }
    one.finish().await
}

/// The sink's state between two passes over the ready items.
struct OneSink {
    stream: BoxStream<'static, Step<Message>>,
    stage: Arc<RunningStage>,
    sink: Sink,
    /// Confirms still to come (a producer that confirms later) and failed sends being retried.
    confirms: Confirms,
    /// A batch being gathered, with its inputs' tokens: the producer did not take a message
    /// at once, so it and the ones ready after it go in one `enqueue_batch`, in order.
    values: Vec<Message>,
    tokens: Vec<Tokens>,
    pending: Vec<Result<PendingConfirm, Error>>,
    /// Set when the stream ended (`None`) or failed (`Some`): what was gathered before it is
    /// still sent.
    end: Option<Option<Error>>,
}

/// What one pass over the ready items did.
enum Pumped {
    /// This many were handed over at once and settled (or their confirms are tracked); a
    /// batch may have been gathered in `values`.
    Went(u32),
    /// As `Went`, and the last one's settle has to wait: run it.
    Settle(SettleJob, u32),
    /// As `Went`, and the last one was an item of several inputs: finish them.
    SettleMany(Tokens, u32),
}

impl OneSink {
    /// Take every ready item (up to [`SINK_BATCH`]): hand each to the producer at once and
    /// settle its input, until the producer cannot take one without waiting; that one and
    /// those after it are gathered for `send_batch`. `Pending` only when nothing was ready.
    ///
    /// The busy path of the pipeline: source, stages, send and ack of one message after
    /// another within this one call; what is rare (confirms still out, a batch, the end, a
    /// settle that waits) is out of line.
    #[inline]
    fn pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<Pumped, Error>> {
        if !self.confirms.is_empty() {
            if let Some(e) = self.poll_confirms(cx) {
                return Poll::Ready(Err(e));
            }
        }
        // The acks of this pass reach the shared counters (and their slots the source)
        // together, when it ends: before anything waits.
        let mut tally = Tally::new(&self.stage.in_flight);
        let mut went = 0u32;
        while (went as usize) + self.values.len() < SINK_BATCH {
            // Each message is handled inside the arm that takes it out of the item: binding it
            // to a variable outside first is one more copy of it per message.
            match self.stream.poll_next_unpin(cx) {
                // Only the fields used are moved out of the item (it is a few hundred bytes;
                // a whole copy per message is measurable).
                Poll::Ready(Some(Ok(Item {
                    mut value,
                    meta: Meta { tokens, trace, .. },
                }))) => {
                    // As `carry_trace` does for the other sink shapes.
                    if let Some(trace) = &trace {
                        give_trace(trace, &mut value);
                    }
                    // Behind a gathered batch, a message waits its turn: order is kept.
                    if !self.values.is_empty() {
                        self.values.push(value);
                        self.tokens.push(tokens);
                        continue;
                    }
                    let enqueued = match self
                        .sink
                        .producer
                        .try_enqueue(&self.sink.destination, value)
                    {
                        TryEnqueue::Done(enqueued) => enqueued,
                        TryEnqueue::Wait(back) => {
                            self.values.push(back);
                            self.tokens.push(tokens);
                            continue;
                        }
                    };
                    went += 1;
                    let Some(tokens) = enqueued_now(
                        &self.stage,
                        &self.sink,
                        enqueued,
                        tokens,
                        &mut self.confirms,
                    ) else {
                        continue;
                    };
                    count_output(&self.stage);
                    match tokens {
                        Tokens::One(t) => match t.done_now(&mut tally) {
                            None => {}
                            Some(job) => {
                                bump(&self.stage.counters.input, u64::from(went));
                                return Poll::Ready(Ok(Pumped::Settle(job, went)));
                            }
                        },
                        many => {
                            bump(&self.stage.counters.input, u64::from(went));
                            return Poll::Ready(Ok(Pumped::SettleMany(many, went)));
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.end = Some(Some(e));
                    break;
                }
                Poll::Ready(None) => {
                    self.end = Some(None);
                    break;
                }
                Poll::Pending => break,
            }
        }
        if went == 0 && self.values.is_empty() && self.end.is_none() {
            return Poll::Pending;
        }
        // This task is the sink's only writer of the counter: no atomic add (see `bump`).
        bump(&self.stage.counters.input, u64::from(went));
        Poll::Ready(Ok(Pumped::Went(went)))
    }

    /// Finished confirms; a failed one stops the pipeline.
    #[cold]
    #[inline(never)]
    fn poll_confirms(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        while !self.confirms.is_empty() {
            match self.confirms.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(e))) => return Some(e),
                Poll::Ready(Some(None)) => {}
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        None
    }

    /// Hand the gathered batch to the producer in one `enqueue_batch` and settle what it
    /// confirms at once.
    async fn send_batch(&mut self) -> Result<(), Error> {
        let OneSink {
            stage,
            sink,
            confirms,
            values,
            tokens,
            pending,
            ..
        } = self;
        let n = values.len();
        add(&stage.counters.input, n as u64);
        if n == 1 {
            if let Some(value) = values.pop() {
                pending.push(sink.producer.enqueue(&sink.destination, value).await);
            }
        } else {
            sink.producer
                .enqueue_batch(&sink.destination, values, pending)
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
            values.clear();
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
            if let Some(t) = enqueued_now(stage, sink, enqueued, t, confirms) {
                count_output(stage);
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
        Ok(())
    }

    /// After the stream ended: its error, else wait for the confirms still out and flush.
    async fn finish(mut self) -> Result<(), Error> {
        if let Some(Some(e)) = self.end.take() {
            return Err(e);
        }
        while let Some(failed) = self.confirms.next().await {
            if let Some(e) = failed {
                return Err(e);
            }
        }
        self.sink.producer.flush().await
    }
}
