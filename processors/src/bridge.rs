//! A consumer-to-producer bridge with a transform and a bounded in-flight window.

use std::future::Future;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use mailroom_core::layer::process_span;
use mailroom_core::{Consumer, Destination, Message, Nack, Producer, Result, TraceContext};
use tracing::Instrument;

/// Turns one input into at most one output; `Ok(None)` filters the input out. An `Err` (or a
/// panic) dead-letters the input.
pub type Transform = Box<dyn FnMut(&Message) -> Result<Option<Message>> + Send>;

/// What a bridge run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Inputs received.
    pub received: u64,
    /// Outputs confirmed by the sink (their inputs acked).
    pub forwarded: u64,
    /// Inputs the transform filtered out (acked).
    pub filtered: u64,
    /// Inputs the transform failed on (dead-lettered).
    pub dead_lettered: u64,
    /// Inputs whose output the sink refused (requeued for another try).
    pub requeued: u64,
}

/// Moves messages from a source to a sink, settling each input after its output is confirmed.
pub struct Bridge {
    source: Box<dyn Consumer>,
    sink: Arc<dyn Producer>,
    destination: Destination,
    transform: Transform,
    max_in_flight: usize,
}

enum Settled {
    Forwarded,
    Requeued,
}

impl Bridge {
    /// A bridge that forwards every input unchanged.
    pub fn new(
        source: Box<dyn Consumer>,
        sink: Arc<dyn Producer>,
        destination: Destination,
    ) -> Self {
        Bridge {
            source,
            sink,
            destination,
            transform: Box::new(|m| Ok(Some(m.clone()))),
            max_in_flight: 256,
        }
    }

    /// Transform (or filter) each input.
    pub fn transform(
        mut self,
        f: impl FnMut(&Message) -> Result<Option<Message>> + Send + 'static,
    ) -> Self {
        self.transform = Box::new(f);
        self
    }

    /// Most outputs awaiting their confirm at once (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Run until `shutdown` resolves or the source closes; then stop taking input, wait for every
    /// output in flight, settle its input, and return what was done.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<BridgeStats> {
        let mut stats = BridgeStats::default();
        let mut in_flight = FuturesUnordered::new();
        tokio::pin!(shutdown);
        loop {
            if in_flight.len() >= self.max_in_flight {
                if let Some(done) = in_flight.next().await {
                    count(&mut stats, done?);
                }
                continue;
            }
            let delivery = tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    count(&mut stats, done?);
                    continue;
                }
                received = self.source.receive() => match received {
                    Ok(d) => d,
                    Err(e) if e.kind() == mailroom_core::ErrorKind::Closed => break,
                    Err(e) => return Err(e),
                },
            };
            stats.received += 1;
            // The input's trace goes on through its output: the process span is the child of
            // the context the input carries, and the output is sent inside it (and inside that
            // context, for propagation without OpenTelemetry). It lasts until the input settles.
            let span = process_span(&delivery);
            let context = TraceContext::extract(delivery.message().headers());
            // A panic in the transform is its failure on this input, like an `Err`.
            let transform = &mut self.transform;
            let transformed = span.in_scope(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    transform(delivery.message())
                }))
                .unwrap_or_else(|panic| Err(crate::stage::panic_error("transform", panic)))
            });
            match transformed {
                Ok(None) => {
                    delivery.ack().instrument(span).await?;
                    stats.filtered += 1;
                }
                Err(e) => {
                    delivery
                        .nack(Nack::dead_letter(e.to_string()))
                        .instrument(span)
                        .await?;
                    stats.dead_lettered += 1;
                }
                Ok(Some(output)) => {
                    let sink = self.sink.clone();
                    let destination = self.destination.clone();
                    let send =
                        async { sink.enqueue(&destination, output).await }.instrument(span.clone());
                    let confirm = match context {
                        Some(context) => context.in_scope(send).await,
                        None => send.await,
                    };
                    in_flight.push(async move {
                        let confirmed = match confirm {
                            Ok(pending) => pending.await,
                            Err(e) => Err(e),
                        };
                        match confirmed {
                            Ok(_) => delivery.ack().await.map(|_| Settled::Forwarded),
                            Err(e) => {
                                tracing::warn!(error = %e, "sink refused output; requeueing input");
                                delivery
                                    .nack(Nack::requeue())
                                    .await
                                    .map(|_| Settled::Requeued)
                            }
                        }
                    }
                    .instrument(span));
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            count(&mut stats, done?);
        }
        self.sink.flush().await?;
        Ok(stats)
    }
}

fn count(stats: &mut BridgeStats, settled: Settled) {
    match settled {
        Settled::Forwarded => stats.forwarded += 1,
        Settled::Requeued => stats.requeued += 1,
    }
}
