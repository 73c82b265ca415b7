//! Stream queues: where a consumer starts reading (`x-stream-offset` on `basic.consume`), and
//! the position its group acked, which the client stores because AMQP 0-9-1 has no server-side
//! offset tracking (that is the stream protocol's, port 5552 and the `rabbitmq_stream` plugin).
//!
//! **Where the position lives.** One durable classic queue per stream,
//! [`position_queue`], declared with `x-max-length=1` and `x-overflow=drop-head`: it holds the
//! last position written (a decimal offset as the body, a persistent message), each write
//! replacing the one before. A consumer opening without a replay reads it (`basic.get`, then
//! its channel closes and the broker puts the message back) and starts after it; with none
//! stored it starts at the stream's first message, as a queue would deliver what was sent
//! before its consumer came. The group is the queue (as Kafka's group id is): one position per
//! stream, meant for one consumer at a time (over AMQP a stream has no competing consumers).
//!
//! **What is written, when.** The position is the last offset of the *contiguous* acked prefix
//! of this consumer's deliveries (an out-of-order ack waits for the ones before it, as on
//! Kafka). An ack that advances it publishes it without waiting for the confirm (an ack costs
//! no extra round trip), unless the previous write is still unconfirmed: then the position is
//! owed, and the next ack after that confirm, or `close`, writes the newest one. So at most one
//! write is in flight, and a steady stream of acks writes about once per confirm round trip,
//! not once per ack. `close` writes what is owed and waits for the last confirm.
//!
//! **Guarantee: at least once.** After a clean `close` the group resumes right after its last
//! acked message. After a crash (or a drop without `close`) it resumes after the last position
//! the broker took, so what was acked after that is delivered again: the acks whose position
//! was in flight or owed, plus everything acked beyond a gap (a delivery
//! dropped or never settled holds the prefix, and the position, where it is). The message a
//! lost connection interrupted is read again from the first unsettled offset.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use mailroom_core::operation::CONSUME;
use mailroom_core::{
    Destination, ErrorKind, Message, PendingConfirm, Producer, Replay, Result, Timestamp,
};

use crate::connection::Connection;
use crate::producer::RabbitProducer;

/// The queue that keeps the group position of `stream`: a readable prefix of the stream's name
/// and a hash of all of it, so the name is stable, unique and within AMQP's 255 bytes.
pub fn position_queue(stream: &str) -> String {
    // FNV-1a: stable across processes and versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut cut = stream.len().min(160);
    while !stream.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("mailroom.stream-position.{}.{hash:016x}", &stream[..cut])
}

/// Where a stream consumer starts, as `x-stream-offset` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// The oldest message the stream retains (`first`).
    First,
    /// Messages written after the consumer attached (`next`).
    Next,
    /// This offset.
    Offset(i64),
    /// The first chunk written at or after this second (AMQP timestamps are in seconds).
    Second(u64),
}

impl StartAt {
    /// Where to start for a replay, else after the stored position, else at the beginning.
    pub fn of(replay: Option<Replay>, stored: Option<i64>) -> StartAt {
        match replay {
            Some(Replay::Earliest) => StartAt::First,
            Some(Replay::Latest) => StartAt::Next,
            Some(Replay::Offset(o)) => StartAt::Offset(o),
            Some(Replay::Time(t)) => StartAt::Second(t.as_millis() / 1000),
            None => stored.map_or(StartAt::First, |p| StartAt::Offset(p.saturating_add(1))),
        }
    }

    /// The `basic.consume` arguments that start there.
    pub fn arguments(self) -> FieldTable {
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
        let value = match self {
            StartAt::First => text("first"),
            StartAt::Next => text("next"),
            StartAt::Offset(o) => AMQPValue::LongLongInt(o),
            StartAt::Second(s) => AMQPValue::Timestamp(s),
        };
        let mut args = FieldTable::default();
        args.insert(crate::codec::STREAM_OFFSET_HEADER.into(), value);
        args
    }
}

/// The deliveries of one consumer, in offset order, and how far their acks reach.
#[derive(Debug, Default)]
struct Book {
    /// Bumped when the consumer starts again on a new channel: settles of deliveries from the
    /// old one no longer count.
    epoch: u64,
    /// Delivered offsets not yet part of the acked prefix, each with whether it was acked.
    pending: VecDeque<(i64, bool)>,
    /// The last offset delivered on this epoch.
    last: Option<i64>,
}

impl Book {
    fn delivered(&mut self, offset: i64) -> u64 {
        self.pending.push_back((offset, false));
        self.last = Some(offset);
        self.epoch
    }

    /// Record an ack; the new end of the acked prefix, if it moved.
    fn acked(&mut self, epoch: u64, offset: i64) -> Option<i64> {
        if epoch != self.epoch {
            return None;
        }
        if let Some(slot) = self.pending.iter_mut().find(|(o, _)| *o == offset) {
            slot.1 = true;
        }
        let mut end = None;
        while let Some(&(o, true)) = self.pending.front() {
            end = Some(o);
            self.pending.pop_front();
        }
        end
    }

    /// Where a consumer starting again must read from so nothing unacked is skipped: the first
    /// unsettled offset, else just after the last delivered one; `None` if nothing came yet.
    fn resume_at(&self) -> Option<i64> {
        match self.pending.front() {
            Some(&(o, _)) => Some(o),
            None => self.last.map(|o| o.saturating_add(1)),
        }
    }

    fn restart(&mut self) {
        self.epoch += 1;
        self.pending.clear();
        self.last = None;
    }
}

/// What a stream delivery's settle reports back to its consumer's cursor.
pub(crate) struct StreamAck {
    pub cursor: Arc<Cursor>,
    pub epoch: u64,
    pub offset: i64,
}

impl StreamAck {
    /// The broker took the ack: let the position move over it.
    pub async fn acked(&self) {
        self.cursor.acked(self.epoch, self.offset).await;
    }
}

/// Writes the position, in order, and remembers the last write's confirm.
#[derive(Default)]
struct Writer {
    producer: Option<RabbitProducer>,
    written: Option<i64>,
    last: Option<PendingConfirm>,
    /// A position not written because the previous write was still unconfirmed.
    owed: Option<i64>,
}

/// A stream consumer's position: its book, where it started, and the stored group position.
pub(crate) struct Cursor {
    connection: Arc<Connection>,
    stream: String,
    position: String,
    book: Mutex<Book>,
    start: StartAt,
    /// A replay by time skips messages whose own timestamp is earlier (the broker starts at a
    /// chunk, within a second before it).
    not_before: Option<Timestamp>,
    writer: tokio::sync::Mutex<Writer>,
}

impl Cursor {
    /// The cursor of a consumer of `stream`: a replay starts where it says, otherwise the
    /// stored group position (read from the broker) decides.
    pub async fn open(
        connection: Arc<Connection>,
        stream: &str,
        replay: Option<Replay>,
    ) -> Result<Cursor> {
        let position = position_queue(stream);
        // Declared before it is read: a read of a missing queue is a channel error the broker
        // reports (and lapin logs at ERROR) on every first consumer of a stream. Declared here
        // and never again, so a write that lands after the stream (and with it this queue) was
        // deleted is dropped by the broker instead of declaring the queue anew, which would
        // leak it.
        declare_position_queue(&connection, &position)
            .await
            .map_err(|e| e.with_operation(CONSUME))?;
        let stored = match replay {
            Some(_) => None,
            None => stored_position(&connection, &position).await?,
        };
        let start = StartAt::of(replay, stored);
        tracing::debug!(stream, ?stored, ?start, "stream consumer starts");
        Ok(Cursor {
            connection,
            stream: stream.to_owned(),
            position,
            book: Mutex::new(Book::default()),
            start,
            not_before: match replay {
                Some(Replay::Time(t)) => Some(t),
                _ => None,
            },
            writer: tokio::sync::Mutex::new(Writer::default()),
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where to (re)start consuming: after a lost channel, from the first unsettled delivery.
    pub fn start_at(&self) -> StartAt {
        self.book().resume_at().map_or(self.start, StartAt::Offset)
    }

    /// The consumer starts again on a new channel: forget what the old one delivered.
    pub fn restarted(&self) {
        self.book().restart();
    }

    /// Record a delivery; the epoch its settle reports back.
    pub fn delivered(&self, offset: i64) -> u64 {
        self.book().delivered(offset)
    }

    /// Whether a replay by time skips this message (it is older than the time asked for).
    pub fn skips(&self, message: &Message) -> bool {
        match (self.not_before, message.timestamp()) {
            (Some(from), Some(at)) => at < from,
            _ => false,
        }
    }

    /// An ack the broker took: advance the prefix and store the position if it moved. A failed
    /// write is logged, not returned: the ack itself holds, and the group reads again from
    /// the last stored position (at least once).
    pub async fn acked(&self, epoch: u64, offset: i64) {
        let Some(end) = self.book().acked(epoch, offset) else {
            return;
        };
        let mut writer = self.writer.lock().await;
        if writer.written.is_some_and(|w| w >= end) {
            return;
        }
        if let Some(last) = writer.last.as_mut() {
            match futures_util::FutureExt::now_or_never(last) {
                None => {
                    writer.owed = Some(end);
                    return;
                }
                Some(confirmed) => {
                    writer.last = None;
                    self.note(confirmed);
                }
            }
        }
        self.store(&mut writer, end).await;
    }

    /// Publish `end` as the position (not waiting for its confirm).
    async fn store(&self, writer: &mut Writer, end: i64) {
        writer.owed = None;
        match self.write(writer, end).await {
            Ok(pending) => {
                writer.written = Some(end);
                writer.last = Some(pending);
            }
            Err(e) => {
                tracing::warn!(stream = %self.stream, position = end, error = %e,
                    "could not store the stream position; the group reads again from the last stored one");
            }
        }
    }

    fn note(&self, confirmed: Result<mailroom_core::Receipt>) {
        match confirmed {
            Ok(_) => {}
            // The stream was deleted (its position queue with it) while this consumer acked:
            // there is no position left to keep.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::debug!(stream = %self.stream, error = %e,
                    "the stream's position queue is gone (the stream was deleted); position not stored");
            }
            Err(e) => {
                tracing::warn!(stream = %self.stream, error = %e,
                "a stream position was not stored; the group reads again from the one before");
            }
        }
    }

    async fn write(&self, writer: &mut Writer, end: i64) -> Result<PendingConfirm> {
        let producer = writer
            .producer
            .get_or_insert_with(|| RabbitProducer::new(self.connection.clone()));
        producer
            .enqueue(
                &Destination::queue(self.position.as_str()),
                Message::new(end.to_string()),
            )
            .await
    }

    /// Write what is owed and wait, within the connect timeout each, for the broker to confirm
    /// the writes.
    pub async fn flush(&self) {
        let mut writer = self.writer.lock().await;
        let wait = self.connection.config.connect_timeout();
        for _ in 0..2 {
            if let Some(last) = writer.last.take() {
                match tokio::time::timeout(wait, last).await {
                    Ok(confirmed) => self.note(confirmed),
                    Err(_) => tracing::warn!(stream = %self.stream, ?wait,
                        "a stream position was not confirmed in time"),
                }
            }
            match writer.owed {
                Some(end) if writer.written.is_none_or(|w| w < end) => {
                    self.store(&mut writer, end).await
                }
                _ => break,
            }
        }
        if let Some(producer) = writer.producer.take() {
            let _ = producer.close().await;
        }
    }
}

/// Delete the position queue of a stream that turned out not to exist (the consumer's open
/// declared it, then could not consume), so it does not outlive the attempt.
pub(crate) async fn forget_position(connection: &Connection, stream: &str) {
    let position = position_queue(stream);
    let what = format!("queue '{position}' (a stream's stored position)");
    let deleted = connection
        .with_channel(CONSUME, &what, |ch| {
            let position = position.clone();
            async move {
                ch.queue_delete(position.as_str().into(), Default::default())
                    .await
                    .map(drop)
            }
        })
        .await;
    if let Err(e) = deleted {
        tracing::debug!(stream, error = %e, "could not delete the position queue of a missing stream");
    }
}

/// Declare the position queue: durable, holding only the newest position.
async fn declare_position_queue(connection: &Connection, position: &str) -> Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from(&b"drop-head"[..])),
    );
    args.insert(
        crate::topology::QUEUE_TYPE_ARG.into(),
        AMQPValue::LongString(LongString::from(&b"classic"[..])),
    );
    let what = format!("queue '{position}' (a stream's stored position)");
    connection
        .with_channel(CONSUME, &what, |ch| {
            let args = args.clone();
            async move {
                ch.queue_declare(
                    position.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await
                .map(drop)
            }
        })
        .await
}

/// The stored group position, or `None` if none was ever written. Reads every message the
/// queue holds (normally one) and keeps the highest; closing the channel puts them back.
async fn stored_position(connection: &Connection, position: &str) -> Result<Option<i64>> {
    /// More than the queue ever holds but for concurrent writers.
    const MOST: usize = 16;
    let what = format!("queue '{position}' (a stream's stored position)");
    let read = connection
        .with_channel(CONSUME, &what, |ch| async move {
            let mut highest: Option<i64> = None;
            for _ in 0..MOST {
                let got = ch
                    .basic_get(position.into(), BasicGetOptions { no_ack: false })
                    .await?;
                let Some(got) = got else { break };
                let offset = std::str::from_utf8(&got.delivery.data)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok());
                match offset {
                    Some(o) => highest = Some(highest.map_or(o, |h| h.max(o))),
                    None => {
                        tracing::warn!(queue = position, "ignoring an unreadable stream position")
                    }
                }
            }
            // Unacked gets return to the queue as the channel closes.
            let _ = ch.close(200, "OK".into()).await;
            Ok(highest)
        })
        .await;
    match read {
        Ok(highest) => Ok(highest),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_advances_over_the_contiguous_acked_prefix_only() {
        let mut book = Book::default();
        let epoch = (0..5).map(|o| book.delivered(o)).last().unwrap();
        assert_eq!(book.acked(epoch, 1), None, "offset 0 is not acked yet");
        assert_eq!(book.acked(epoch, 0), Some(1));
        assert_eq!(book.acked(epoch, 3), None);
        assert_eq!(book.resume_at(), Some(2));
        assert_eq!(book.acked(epoch, 2), Some(3));
        assert_eq!(book.acked(epoch, 4), Some(4));
        assert_eq!(book.resume_at(), Some(5));
    }

    #[test]
    fn settles_from_before_a_restart_do_not_count() {
        let mut book = Book::default();
        let old = book.delivered(7);
        book.restart();
        assert_eq!(book.acked(old, 7), None);
        assert_eq!(book.resume_at(), None);
        let new = book.delivered(7);
        assert_eq!(book.acked(new, 7), Some(7));
    }

    #[test]
    fn a_consumer_starts_at_its_replay_else_after_the_stored_position() {
        assert_eq!(StartAt::of(None, None), StartAt::First);
        assert_eq!(StartAt::of(None, Some(41)), StartAt::Offset(42));
        assert_eq!(
            StartAt::of(Some(Replay::Earliest), Some(41)),
            StartAt::First
        );
        assert_eq!(StartAt::of(Some(Replay::Latest), None), StartAt::Next);
        assert_eq!(
            StartAt::of(Some(Replay::Offset(3)), Some(41)),
            StartAt::Offset(3)
        );
        let t = Timestamp::from_millis(1_700_000_000_999);
        assert_eq!(
            StartAt::of(Some(Replay::Time(t)), None),
            StartAt::Second(1_700_000_000)
        );
    }

    #[test]
    fn position_queue_names_are_bounded_stable_and_distinct() {
        let long = "s".repeat(255);
        assert!(position_queue(&long).len() <= 255);
        assert_eq!(position_queue("orders"), position_queue("orders"));
        assert_ne!(position_queue("orders"), position_queue("orders2"));
        assert!(position_queue("orders").starts_with("mailroom.stream-position.orders."));
    }
}
