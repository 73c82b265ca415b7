//! A received message and the obligation to settle it exactly once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::Message;

/// Where a delivery came from and how often it has been tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// 1 on first delivery, then one more for each redelivery (where the backend counts).
    pub attempt: u32,
    /// Whether the broker says it delivered this message before.
    pub redelivered: bool,
    /// The queue (or topic) it was received from. Shared, not owned: a backend hands every
    /// delivery from one queue the same name without allocating a copy per message.
    pub source: Arc<str>,
    /// The partition, where the broker partitions.
    pub partition: Option<i32>,
    /// The offset, where the broker has offsets.
    pub offset: Option<i64>,
    /// The consumer group that received it, where the broker has groups (Kafka: the queue's
    /// group, named after the queue).
    pub consumer_group: Option<Arc<str>>,
    /// The routing key it was published with, where the broker routes by key (RabbitMQ).
    pub routing_key: Option<Arc<str>>,
}

impl DeliveryInfo {
    /// A first delivery from `source`.
    pub fn new(source: impl Into<Arc<str>>) -> Self {
        DeliveryInfo {
            attempt: 1,
            redelivered: false,
            source: source.into(),
            partition: None,
            offset: None,
            consumer_group: None,
            routing_key: None,
        }
    }
}

/// What a negative acknowledgement asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nack {
    /// Put the message back to be delivered again, at once or after a delay.
    Requeue {
        /// Hold the message this long first (needs `delayed_delivery`).
        delay: Option<Duration>,
    },
    /// Send the message to the queue's dead-letter target, with the reason in a header.
    DeadLetter {
        /// Why, for whoever reads the dead-letter queue.
        reason: String,
    },
}

impl Nack {
    /// Requeue now.
    pub fn requeue() -> Self {
        Nack::Requeue { delay: None }
    }

    /// Requeue after `delay`.
    pub fn requeue_after(delay: Duration) -> Self {
        Nack::Requeue { delay: Some(delay) }
    }

    /// Dead-letter with a reason.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Nack::DeadLetter {
            reason: reason.into(),
        }
    }
}

/// Header set on dead-lettered messages: why they were dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-mailroom-dead-letter-reason";
/// Header set on dead-lettered messages: the queue they came from.
pub const DEAD_LETTER_SOURCE_HEADER: &str = "x-mailroom-dead-letter-source";
/// Header set on dead-lettered messages: the attempt count when they were dead-lettered.
pub const DEAD_LETTER_ATTEMPTS_HEADER: &str = "x-mailroom-dead-letter-attempts";

/// Longest dead-letter reason kept in the header; the rest is cut so the header stays valid.
const MAX_REASON_BYTES: usize = 1024;

/// Stamp a message with why, from where and after how many attempts it was dead-lettered.
///
/// Every backend that dead-letters client-side uses this, so a dead-letter queue reads the same
/// whichever broker filled it.
pub fn stamp_dead_letter(message: &mut Message, source: &str, reason: &str, attempts: u32) {
    let mut cut = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let headers = message.headers_mut();
    // Names are constants and values are bounded above, so these inserts cannot fail.
    let _ = headers.insert(DEAD_LETTER_REASON_HEADER, &reason[..cut]);
    let _ = headers.insert(DEAD_LETTER_SOURCE_HEADER, source);
    let _ = headers.insert(DEAD_LETTER_ATTEMPTS_HEADER, attempts.to_string());
}

/// The backend side of settling one delivery. Implemented by backends, used through [`Delivery`].
#[async_trait]
pub trait Settle: Send + Sync {
    /// The message was processed; the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<()>;
    /// The message was not processed; requeue or dead-letter it.
    async fn nack(self: Box<Self>, nack: Nack) -> Result<()>;
    /// The delivery was dropped unsettled: the message must come back (synchronously queued, or
    /// left to the broker's own redelivery). Must not block.
    fn abandon(self: Box<Self>);

    /// Ack at once, for a backend that needs no waiting to do it: `Some` with the outcome once
    /// done (the handle is then spent: dropping it must not give the message back), `None` to
    /// have [`ack`](Settle::ack) called instead. [`Delivery::ack`] tries this first, which
    /// spares a boxed future per ack. The default is `None`.
    fn try_ack(&mut self) -> Option<Result<()>> {
        None
    }
}

/// A received message that must be settled exactly once.
///
/// `ack` and `nack` consume the delivery, so settling twice does not compile. Dropping it
/// unsettled returns the message to its queue (or leaves it to the broker to redeliver): nothing
/// is lost by an early return or a panic in a handler.
pub struct Delivery {
    message: Message,
    info: DeliveryInfo,
    // Abandons on drop, so a delivery dropped unsettled is abandoned without a `Drop` of its
    // own, and `into_parts` can move the message out without copying it.
    settle: Settlement,
}

impl Delivery {
    /// Assemble a delivery (backends do this).
    #[inline]
    pub fn new(message: Message, info: DeliveryInfo, settle: Box<dyn Settle>) -> Self {
        Delivery {
            message,
            info,
            settle: Settlement {
                settle: Some(settle),
            },
        }
    }

    /// The message.
    #[inline]
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Where it came from and its attempt count.
    #[inline]
    pub fn info(&self) -> &DeliveryInfo {
        &self.info
    }

    /// Shorthand for `info().attempt`.
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// Decode the JSON payload into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        crate::json::decode(&self.message)
    }

    /// Acknowledge: processing is done.
    ///
    /// The message and info are let go at once: the future holds only the settle handle.
    #[inline]
    pub fn ack(self) -> impl std::future::Future<Output = Result<()>> + Send {
        self.settle.ack()
    }

    /// Negative acknowledgement: requeue or dead-letter.
    pub async fn nack(self, nack: Nack) -> Result<()> {
        self.settle.nack(nack).await
    }

    /// Acknowledge without waiting, where the backend settles at once (the memory broker's
    /// queue, Kafka's offset book): [`TryAck::Done`] with the ack's result, or
    /// [`TryAck::Wait`] handing the delivery back unsettled when the ack has to wait for the
    /// broker — then [`Delivery::ack`] it.
    ///
    /// For a loop that drains ready deliveries with
    /// [`Consumer::try_receive`](crate::Consumer::try_receive) without an `.await` per message.
    pub fn try_ack(mut self) -> TryAck {
        match self.settle.ack_now() {
            Some(acked) => TryAck::Done(acked),
            None => TryAck::Wait(self),
        }
    }

    /// Split the delivery into its message, its info and the obligation to settle it.
    ///
    /// The message moves out without a copy, so code that consumes it (a pipeline stage) does
    /// not have to clone it out of the delivery. The [`Settlement`] keeps every guarantee of
    /// the delivery: it is settled once by `ack` or `nack`, and dropping it unsettled
    /// abandons the message to be redelivered.
    #[inline]
    pub fn into_parts(self) -> (Message, DeliveryInfo, Settlement) {
        (self.message, self.info, self.settle)
    }
}

/// What [`Delivery::try_ack`] (or [`Settlement::try_ack`]) did.
#[must_use = "a delivery handed back is still unsettled: ack it"]
pub enum TryAck<Unsettled = Delivery> {
    /// Acked at once; the ack's result.
    Done(Result<()>),
    /// The ack has to wait for the broker: the delivery (or settlement), unsettled, for its
    /// `ack`.
    Wait(Unsettled),
}

/// The obligation to settle one delivery, without its message: see [`Delivery::into_parts`].
///
/// `ack` and `nack` consume it, so settling twice does not compile. Dropping it unsettled
/// abandons the delivery exactly as dropping a [`Delivery`] does: the message comes back.
pub struct Settlement {
    settle: Option<Box<dyn Settle>>,
}

impl Settlement {
    fn take_settle(&mut self) -> Box<dyn Settle> {
        // Only `ack`/`nack`/`drop` take it, and the first two consume `self`.
        self.settle
            .take()
            .unwrap_or_else(|| Box::new(AlreadySettled))
    }

    /// Ack at once where the backend can ([`Settle::try_ack`]), for a layer's settle handle
    /// to pass its backend's immediate ack on; `None` (still unsettled) otherwise.
    pub(crate) fn ack_now(&mut self) -> Option<Result<()>> {
        let acked = self.settle.as_mut()?.try_ack()?;
        // Spent: dropping it must not give the message back.
        self.settle = None;
        Some(acked)
    }

    /// Ack without waiting where the backend settles at once (the memory broker, Kafka's
    /// offset book): [`TryAck::Done`] with the ack's result, or [`TryAck::Wait`] handing the
    /// settlement back unsettled when the ack has to wait for the broker — then `ack` it.
    /// What [`Delivery::try_ack`] is for a delivery taken apart with `into_parts` (a pipeline
    /// settling its input after its outputs are confirmed).
    #[inline]
    pub fn try_ack(mut self) -> TryAck<Settlement> {
        match self.ack_now() {
            Some(acked) => TryAck::Done(acked),
            None => TryAck::Wait(self),
        }
    }

    /// Acknowledge: processing is done.
    #[inline]
    pub async fn ack(mut self) -> Result<()> {
        let mut settle = self.take_settle();
        if let Some(acked) = settle.try_ack() {
            return acked;
        }
        settle.ack().await
    }

    /// Negative acknowledgement: requeue or dead-letter.
    pub async fn nack(mut self, nack: Nack) -> Result<()> {
        self.take_settle().nack(nack).await
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.abandon();
        }
    }
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settlement")
            .field("settled", &self.settle.is_none())
            .finish()
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("info", &self.info)
            .field("settled", &self.settle.settle.is_none())
            .finish()
    }
}

struct AlreadySettled;

#[async_trait]
impl Settle for AlreadySettled {
    async fn ack(self: Box<Self>) -> Result<()> {
        Err(already())
    }
    async fn nack(self: Box<Self>, _: Nack) -> Result<()> {
        Err(already())
    }
    fn abandon(self: Box<Self>) {}
}

fn already() -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::AlreadySettled,
        "delivery was already settled",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records which settle call reached the backend.
    struct Recording(Arc<Mutex<Vec<String>>>);

    impl Recording {
        fn log(&self, what: impl Into<String>) {
            self.0.lock().unwrap().push(what.into());
        }
    }

    #[async_trait]
    impl Settle for Recording {
        async fn ack(self: Box<Self>) -> Result<()> {
            self.log("ack");
            Ok(())
        }
        async fn nack(self: Box<Self>, nack: Nack) -> Result<()> {
            self.log(format!("nack {nack:?}"));
            Ok(())
        }
        fn abandon(self: Box<Self>) {
            self.log("abandon");
        }
    }

    fn delivery() -> (Delivery, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let message = Message::new("payload");
        let d = Delivery::new(
            message,
            DeliveryInfo::new("q"),
            Box::new(Recording(log.clone())),
        );
        (d, log)
    }

    /// Acks at once, and records whether the boxed `ack` was reached too.
    struct AcksAtOnce(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Settle for AcksAtOnce {
        async fn ack(self: Box<Self>) -> Result<()> {
            self.0.lock().unwrap().push("ack".into());
            Ok(())
        }
        async fn nack(self: Box<Self>, _: Nack) -> Result<()> {
            Ok(())
        }
        fn abandon(self: Box<Self>) {
            self.0.lock().unwrap().push("abandon".into());
        }
        fn try_ack(&mut self) -> Option<Result<()>> {
            self.0.lock().unwrap().push("try_ack".into());
            Some(Ok(()))
        }
    }

    #[test]
    fn ack_takes_the_backends_at_once_path_and_nothing_else() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let d = Delivery::new(
            Message::new("p"),
            DeliveryInfo::new("q"),
            Box::new(AcksAtOnce(log.clone())),
        );
        run(d.ack()).unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["try_ack"],
            "no boxed ack, no abandon"
        );
    }

    #[test]
    fn try_ack_settles_where_the_backend_can_and_hands_the_delivery_back_where_it_cannot() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let d = Delivery::new(
            Message::new("p"),
            DeliveryInfo::new("q"),
            Box::new(AcksAtOnce(log.clone())),
        );
        assert!(matches!(d.try_ack(), TryAck::Done(Ok(()))));
        assert_eq!(
            *log.lock().unwrap(),
            ["try_ack"],
            "spent: no abandon on drop"
        );

        let (d, log) = delivery();
        let id = d.message().id().clone();
        let TryAck::Wait(back) = d.try_ack() else {
            panic!("this backend has no at-once ack");
        };
        assert_eq!(back.message().id(), &id);
        assert!(log.lock().unwrap().is_empty(), "still unsettled");
        run(back.ack()).unwrap();
        assert_eq!(*log.lock().unwrap(), ["ack"]);
    }

    #[test]
    fn a_settlement_acks_at_once_where_the_backend_can_and_comes_back_where_it_cannot() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (_, _, settlement) = Delivery::new(
            Message::new("p"),
            DeliveryInfo::new("q"),
            Box::new(AcksAtOnce(log.clone())),
        )
        .into_parts();
        assert!(matches!(settlement.try_ack(), TryAck::Done(Ok(()))));
        assert_eq!(*log.lock().unwrap(), ["try_ack"], "spent: no abandon");

        let (d, log) = delivery();
        let (_, _, settlement) = d.into_parts();
        let TryAck::Wait(back) = settlement.try_ack() else {
            panic!("this backend has no at-once ack");
        };
        assert!(log.lock().unwrap().is_empty(), "still unsettled");
        run(back.ack()).unwrap();
        assert_eq!(*log.lock().unwrap(), ["ack"]);
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("recording settle never waits")
    }

    #[test]
    fn into_parts_moves_the_message_and_keeps_the_settle() {
        let (d, log) = delivery();
        let id = d.message().id().clone();
        let (message, info, settlement) = d.into_parts();
        assert_eq!(message.id(), &id);
        assert_eq!(&message.payload()[..], b"payload");
        assert_eq!(&*info.source, "q");
        assert!(log.lock().unwrap().is_empty(), "splitting settles nothing");
        run(settlement.ack()).unwrap();
        assert_eq!(*log.lock().unwrap(), ["ack"]);
    }

    #[test]
    fn a_settlement_nacks_or_abandons_when_dropped() {
        let (d, log) = delivery();
        let (_, _, settlement) = d.into_parts();
        run(settlement.nack(Nack::requeue())).unwrap();
        assert_eq!(*log.lock().unwrap(), ["nack Requeue { delay: None }"]);

        let (d, log) = delivery();
        let (_, _, settlement) = d.into_parts();
        drop(settlement);
        assert_eq!(*log.lock().unwrap(), ["abandon"]);
    }

    #[test]
    fn a_delivery_still_acks_nacks_and_abandons_on_drop() {
        let (d, log) = delivery();
        run(d.ack()).unwrap();
        let (d2, log2) = delivery();
        run(d2.nack(Nack::dead_letter("bad"))).unwrap();
        let (d3, log3) = delivery();
        drop(d3);
        assert_eq!(*log.lock().unwrap(), ["ack"]);
        assert_eq!(log2.lock().unwrap().len(), 1);
        assert_eq!(*log3.lock().unwrap(), ["abandon"]);
    }
}
