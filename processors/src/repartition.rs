//! Repartition by key through a keyed topic, so that keyed state stays correct when several
//! instances of a pipeline share its sources.
//!
//! The flow so far ends in a sink: each message is sent to the keyed topic with its item's key
//! as the message key, and its input is settled once the send is confirmed. The flow goes on
//! from a consumer of that topic, which a broker that partitions by message key (Kafka) feeds
//! with every key at one instance only. Both halves run in the same pipeline, share its
//! in-flight bound and its shutdown; the topic is the durable hand-over between them, so a
//! crash on either side loses nothing (the first half's inputs are settled only once their
//! messages are in the topic; the second half's inputs are the topic's own messages).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use futures_util::{FutureExt, Stream};
use mailroom_core::{Error, Message};

use crate::flow::{Flow, Item, Step};
use crate::metrics::add;
use crate::sink::{drive_routed, sink_stage, Router, Sink};
use crate::stage::StageSpec;

impl Flow<Message> {
    /// Send every message to `through`, a topic partitioned by message key, keyed by its
    /// item's key (see [`Flow::key_by`]), and go on from `source`, a consumer of that topic.
    ///
    /// After this step the flow counts as partitioned by key, so keyed windows are accepted
    /// in a [`scaled_out`](crate::PipelineBuilder::scaled_out) pipeline. An item without a
    /// key cannot be placed: it fails with an `InvalidInput` error, handled by the stage's
    /// policy. Sends are retried as for any sink ([`default_sink_policy`](crate::default_sink_policy)).
    pub fn repartition_by_key(
        self,
        through: Sink,
        source: impl Into<crate::Source>,
    ) -> Flow<Message> {
        self.repartition_by_key_with(sink_stage("repartition"), through, source)
    }

    /// [`repartition_by_key`](Flow::repartition_by_key) with this stage name and error policy
    /// (for failed sends and items without a key).
    pub fn repartition_by_key_with(
        self,
        spec: impl Into<StageSpec>,
        through: Sink,
        source: impl Into<crate::Source>,
    ) -> Flow<Message> {
        let Flow { stream, mut parts } = self;
        let stage = parts.stage(spec.into());
        let keyed = {
            let stage = stage.clone();
            stream
                .filter_map(move |step| {
                    let item = match step {
                        Ok(item) => item,
                        Err(e) => {
                            return futures_util::future::Either::Left(std::future::ready(Some(
                                Err(e),
                            )))
                        }
                    };
                    let Item { value, meta } = item;
                    let Some(key) = meta.key.clone() else {
                        let error = Error::invalid_input(format!(
                            "repartition stage '{}': an item has no key to partition by (set one \
                             with key_by, or send keyed messages)",
                            stage.name
                        ));
                        add(&stage.counters.input, 1);
                        let stage = stage.clone();
                        return futures_util::future::Either::Right(
                            async move { stage.give_up(meta.tokens, error, 1).await.map(Err) }
                                .boxed(),
                        );
                    };
                    let value = if value.key() == Some(&*key) {
                        value
                    } else {
                        let mut parts = value.into_parts();
                        parts.key = Some(key);
                        Message::from_parts(parts)
                    };
                    futures_util::future::Either::Left(std::future::ready(Some(Ok(Item {
                        value,
                        meta,
                    }))))
                })
                .boxed()
        };
        let upstream = drive_routed(keyed, stage, vec![through], Router::All).boxed();
        let downstream = parts.add_source(source.into());
        parts.keyed_sources = true;
        Flow {
            stream: Repartitioned {
                upstream: Some(upstream),
                downstream: downstream.boxed(),
                downstream_done: false,
            }
            .boxed(),
            parts,
        }
    }
}

/// The second half of a repartitioned flow, driving the first half as it is polled.
struct Repartitioned {
    /// Sends the first half's messages to the keyed topic; `None` once it has finished.
    upstream: Option<BoxFuture<'static, Result<(), Error>>>,
    downstream: BoxStream<'static, Step<Message>>,
    downstream_done: bool,
}

impl Stream for Repartitioned {
    type Item = Step<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Step<Message>>> {
        let this = &mut *self;
        if let Some(upstream) = this.upstream.as_mut() {
            match upstream.poll_unpin(cx) {
                Poll::Ready(Ok(())) => this.upstream = None,
                Poll::Ready(Err(e)) => {
                    this.upstream = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {}
            }
        }
        if !this.downstream_done {
            match this.downstream.poll_next_unpin(cx) {
                Poll::Ready(Some(step)) => return Poll::Ready(Some(step)),
                Poll::Ready(None) => this.downstream_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        // Both halves stop on the same shutdown; end once the first has drained as well.
        if this.upstream.is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

// Both halves are boxed: nothing is pinned structurally.
impl Unpin for Repartitioned {}
