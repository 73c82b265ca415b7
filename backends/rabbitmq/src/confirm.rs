//! Awaiting publisher confirms: one driver task per producer awaits them in publish order, and
//! every send that gets more than a plain ack goes its own way here: a refusal or a returned
//! message explained, a re-publish after a lost connection or a confirm that never came.
//!
//! The send path reaches this file once its message is on the wire (`Inner::confirm`, at the
//! end of `producer.rs`'s `enqueue_stamped`); the pending confirm resolves from here.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::{Confirmation, PublisherConfirm};
use mailroom_core::operation::SEND;
use mailroom_core::{Destination, Error, ErrorKind, Overflow, PendingConfirm, Receipt, Result};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::connection::{Link, Lost};
use crate::error::{is_connection_loss, map};
use crate::producer::{Inner, Send};
use crate::BACKEND;

/// How often a message refused by a full `Backpressure` queue is offered again, at most.
const FULL_QUEUE_RETRY_MAX: Duration = Duration::from_millis(500);
/// How many times a send is re-published after its channel was closed by a channel error.
const CHANNEL_ERROR_RETRIES: u32 = 3;

/// A published message whose confirm the driver awaits.
pub(crate) struct Job {
    send: Send,
    published: Published,
    /// Its place in the window, released once the outcome is known.
    permit: OwnedSemaphorePermit,
    tx: oneshot::Sender<Result<Receipt>>,
}

/// A message handed to the broker, whose confirm is awaited.
pub(crate) struct Published {
    pub(crate) confirm: PublisherConfirm,
    pub(crate) live: Arc<Link>,
    pub(crate) epoch: u64,
    pub(crate) at: Instant,
}

/// How the wait for a confirm ended.
// Boxing the answer would cost an allocation per confirm on the fast path to save a move of a
// few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Verdict {
    /// What the broker said, or the error lapin raised for the channel or connection.
    Answer(lapin::Result<Confirmation>),
    /// No confirm within the connect timeout, or the connection was given up meanwhile.
    Silent(Lost),
}

impl Inner {
    /// Hand a published message to the confirm driver; the pending confirm resolves with the
    /// broker's verdict (or the error that ended the wait for it), releasing `permit`.
    pub(crate) fn confirm(
        &self,
        send: Send,
        published: Published,
        permit: OwnedSemaphorePermit,
    ) -> Result<PendingConfirm> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            send,
            published,
            permit,
            tx,
        };
        if let Err(mpsc::error::SendError(job)) = self.driver().send(job) {
            // The driver only stops when the producer is gone; this producer is not.
            return Err(Error::closed("producer is closed")
                .with_backend(BACKEND)
                .with_operation(SEND)
                .with_undelivered(job.send.message));
        }
        Ok(PendingConfirm::waiting(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Broker,
                    "the confirm task ended without a result (runtime shutting down?)",
                )
                .with_backend(BACKEND)
                .with_operation(SEND))
            })
        }))
    }

    /// The sender to this producer's confirm driver, started on first use.
    fn driver(&self) -> &mpsc::UnboundedSender<Job> {
        self.driver.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let wait = self.connection.config.connect_timeout();
            tokio::spawn(drive(self.me.clone(), wait, rx));
            tx
        })
    }
}

/// Awaits confirms in publish order (the order the broker sends them), so a window of
/// unconfirmed messages costs one task and one wake-up per confirm instead of a task each.
/// Anything but a plain ack (a lost connection to re-publish across, a refusal to explain, a
/// confirm that did not come in time) moves to a task of its own so the rest of the window is
/// not held up. Each wait is bounded (see [`await_verdict`]), and the deadlines of a window
/// published together run out together, so a silent broker costs the window one connect
/// timeout, not one per message.
///
/// The queue is unbounded in type only: every job holds a permit of the producer's window.
async fn drive(
    inner: Weak<Inner>,
    connect_timeout: Duration,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        let Job {
            send,
            published,
            permit,
            tx,
        } = job;
        match await_verdict(published, connect_timeout).await {
            (Verdict::Answer(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)), _, _) => {
                drop(permit);
                let _ = tx.send(Ok(Receipt::new(send.message.id().clone())));
            }
            (verdict, live, epoch) => match inner.upgrade() {
                Some(inner) => {
                    tokio::spawn(async move {
                        let result = inner.await_confirm(send, verdict, live, epoch).await;
                        drop(permit);
                        let _ = tx.send(result);
                    });
                }
                None => {
                    drop(permit);
                    let _ = tx.send(Err(Error::closed(
                        "the producer was dropped before the broker confirmed the message",
                    )
                    .with_backend(BACKEND)
                    .with_operation(SEND)
                    .with_undelivered(send.message)));
                }
            },
        }
    }
}

/// Wait for a confirm at most `connect_timeout` from its publish.
///
/// Why bounded: a confirm is the broker's answer to a publish like any other, and a broker
/// that came back from a restart half-way (or a path that stalled) never sends it; waiting for
/// it held the window, then every `enqueue` and `flush`, forever.
async fn await_verdict(
    published: Published,
    connect_timeout: Duration,
) -> (Verdict, Arc<Link>, u64) {
    let Published {
        confirm,
        live,
        epoch,
        at,
    } = published;
    let wait = connect_timeout.saturating_sub(at.elapsed());
    let verdict = tokio::select! {
        // A confirm that is already there wins over a connection given up at the same moment.
        biased;
        answer = tokio::time::timeout(wait, confirm) => match answer {
            Ok(answer) => Verdict::Answer(answer),
            Err(_) => Verdict::Silent(Lost {
                why: format!("no confirm within {connect_timeout:?} of the publish"),
                silent: true,
            }),
        },
        () = live.retired() => Verdict::Silent(Lost {
            why: "the connection was given up before the confirm came".into(),
            silent: false,
        }),
    };
    (verdict, live, epoch)
}

impl Inner {
    /// Wait for the broker's verdict, re-publishing after a lost connection or a confirm that
    /// did not come, until the reconnect timeout has passed without an answer from the broker.
    async fn await_confirm(
        &self,
        send: Send,
        mut verdict: Verdict,
        mut live: Arc<Link>,
        mut epoch: u64,
    ) -> Result<Receipt> {
        let context = |e: Error| e.with_backend(BACKEND).with_operation(SEND);
        let mut full_backoff = Duration::from_millis(20);
        let mut channel_errors = 0;
        let mut deadline = self.connection.deadline();
        loop {
            let lost = match verdict {
                Verdict::Answer(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                    return Ok(Receipt::new(send.message.id().clone()))
                }
                Verdict::Answer(Ok(Confirmation::Ack(Some(returned)))) => {
                    return Err(
                        context(returned_error(&send, &returned)).with_undelivered(send.message)
                    )
                }
                Verdict::Answer(Ok(Confirmation::Nack(_))) => match self.refused(&send) {
                    Some(e) => return Err(context(e).with_undelivered(send.message)),
                    None => {
                        // The broker answered: the budget for reaching it starts again. Offering
                        // again until there is room is the `Backpressure` policy itself.
                        deadline = self.connection.deadline();
                        tokio::time::sleep(full_backoff).await;
                        full_backoff = (full_backoff * 2).min(FULL_QUEUE_RETRY_MAX);
                        None
                    }
                },
                Verdict::Answer(Err(e)) if is_connection_loss(&e) => {
                    tracing::debug!(error = %e, id = %send.message.id(), "re-publishing after a lost connection");
                    self.connection.forget(&live);
                    self.discard(epoch);
                    Some(Lost {
                        why: format!("the connection broke before the confirm: {e}"),
                        silent: false,
                    })
                }
                Verdict::Answer(Err(e))
                    if e.is_amqp_soft_error() && channel_errors < CHANNEL_ERROR_RETRIES =>
                {
                    // Another publish on the channel (e.g. to an exchange deleted since) closed
                    // it; this message was not at fault unless its own exchange is gone.
                    channel_errors += 1;
                    if let Destination::Exchange { name, .. } = &send.destination {
                        self.lock_exchanges().remove(name.as_ref());
                        if let Err(e) = self.check_exchange(name).await {
                            return Err(e.with_undelivered(send.message));
                        }
                    }
                    None
                }
                Verdict::Answer(Err(e)) => {
                    return Err(
                        map(e, SEND, &send.destination.to_string()).with_undelivered(send.message)
                    )
                }
                Verdict::Silent(lost) => {
                    tracing::debug!(%lost, id = %send.message.id(), "re-publishing on a new channel");
                    self.discard(epoch);
                    Some(lost)
                }
            };
            if let Some(lost) = lost {
                if deadline.passed() {
                    return Err(self
                        .connection
                        .gave_up(SEND, &lost)
                        .with_undelivered(send.message));
                }
            }
            let published = match self.publish(&send, deadline).await {
                Ok(p) => p,
                Err(e) => return Err(e.with_undelivered(send.message)),
            };
            (verdict, live, epoch) =
                await_verdict(published, self.connection.config.connect_timeout()).await;
        }
    }

    /// The error for a broker nack, or `None` when the message should be offered again (a
    /// full queue declared with `Overflow::Backpressure`).
    fn refused(&self, send: &Send) -> Option<Error> {
        if let Destination::Queue(q) = &send.destination {
            if send.stamp.delayed {
                return Some(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "the broker refused the delayed message for {}",
                        send.destination
                    ),
                ));
            }
            match self.connection.queue_settings(q).max_length {
                Some((_, Overflow::Backpressure)) => return None,
                Some((max, Overflow::Reject)) => {
                    return Some(Error::new(
                        ErrorKind::QueueFull,
                        format!("queue '{q}' is full ({max} messages, overflow=reject)"),
                    ))
                }
                None => {}
            }
        }
        Some(Error::new(
            ErrorKind::Rejected,
            format!(
                "the broker refused the message for {} (negative confirm; most often a queue \
                 bounded with x-overflow=reject-publish is full)",
                send.destination
            ),
        ))
    }
}

fn returned_error(send: &Send, returned: &BasicReturnMessage) -> Error {
    // What identifies the message, never its header values or payload (lapin's own dump of
    // it is kept out of the logs: `runtime.rs`).
    tracing::warn!(
        backend = BACKEND,
        id = %send.message.id(),
        exchange = %returned.delivery.exchange,
        routing_key = %returned.delivery.routing_key,
        size = returned.delivery.data.len(),
        reply_code = returned.reply_code,
        reply_text = %returned.reply_text,
        "the broker returned a message: no queue took it"
    );
    match &send.destination {
        Destination::Queue(q) => Error::not_found(format!(
            "queue '{q}' does not exist: the broker returned the message ({} {}; mandatory is on)",
            returned.reply_code, returned.reply_text
        )),
        Destination::Exchange { .. } => Error::new(
            ErrorKind::Unroutable,
            format!(
                "no queue is bound to {} for this message: the broker returned it ({} {}; \
                 mandatory is on)",
                send.destination, returned.reply_code, returned.reply_text
            ),
        ),
    }
}
