//! The message: a byte payload, ordered headers, an optional key and a stable id.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::headers::Headers;

/// Longest key accepted, in bytes; brokers carry keys in headers or partitioner input.
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest id accepted, in bytes (AMQP's message-id is a short string).
pub const MAX_ID_BYTES: usize = 255;

/// A message's stable identity, kept across every hop and redelivery.
///
/// Generated ids are UUIDs and stay binary until they are printed, so minting one costs no
/// allocation; ids that arrive from a broker compare equal to the id that was sent.
///
/// They are version-8 (custom) UUIDs, counted rather than drawn: each thread starts a counter
/// at a random point and mixes it with a random key of its own (see [`MessageId::generate`]).
/// That costs a few instructions per message instead of a cryptographic random draw, and no
/// two ids a process generates are equal. Ids are unique, not secret: do not use one as an
/// unguessable token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageId(IdRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum IdRepr {
    Uuid(Uuid),
    Text(Arc<str>),
}

impl MessageId {
    /// A fresh id, unique in this process and, with the odds of random ids, across processes.
    ///
    /// Its last 62 bits are the calling thread's counter (a random start, plus one per id), so
    /// one thread repeats no id before 2^62 of them; its first 60 bits mix that count with the
    /// thread's random key, so ids of different threads and processes differ even where
    /// their counters meet, and the leading characters of the text form vary from id to id.
    pub fn generate() -> Self {
        MessageId(IdRepr::Uuid(next_counted_uuid()))
    }

    /// An id from text, validated: non-empty, at most [`MAX_ID_BYTES`], no control characters.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(Error::invalid_input("message id is empty"));
        }
        if text.len() > MAX_ID_BYTES {
            return Err(Error::invalid_input(format!(
                "message id is {} bytes; at most {MAX_ID_BYTES} are allowed",
                text.len()
            )));
        }
        // A canonical UUID text becomes the binary form so that it equals the id that was sent.
        // Checked first, in one pass over the bytes: this runs for every message a backend
        // receives, and a canonical text has no control character to look for.
        if let Some(uuid) = parse_canonical_uuid(text.as_bytes()) {
            return Ok(MessageId(IdRepr::Uuid(uuid)));
        }
        if has_control(text) {
            return Err(Error::invalid_input(
                "message id contains a control character",
            ));
        }
        Ok(MessageId(IdRepr::Text(Arc::from(text))))
    }

    /// The id for raw id bytes read off the wire: the id itself when [`MessageId::parse`]
    /// accepts it, else [`MessageId::derive`]d from the bytes (the `bool` is then true).
    pub fn from_wire(raw: &[u8]) -> (Self, bool) {
        match std::str::from_utf8(raw).map(MessageId::parse) {
            Ok(Ok(id)) => (id, false),
            _ => (MessageId::derive(raw), true),
        }
    }

    /// A version-8 UUID computed from `raw` alone, for an id mailroom cannot accept as it is
    /// (empty, too long, a control character, not UTF-8): every delivery of one message gets
    /// the same id, so redeliveries stay recognisable. The hash is two 64-bit FNV-1a passes
    /// with different offsets, fixed here so that it is the same in every process and release;
    /// it is not collision-resistant against someone choosing ids on purpose, and need not be:
    /// whoever can write to the broker can set any valid id anyway.
    pub fn derive(raw: &[u8]) -> Self {
        let fnv = |offset: u64| {
            b"mailroom-derived-id:"
                .iter()
                .chain(raw)
                .fold(offset, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
                })
        };
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
        bytes[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
        MessageId(IdRepr::Uuid(
            uuid::Builder::from_custom_bytes(bytes).into_uuid(),
        ))
    }
}

/// Whether `text` holds a control character (`char::is_control`: U+0000..=U+001F and
/// U+007F..=U+009F), read byte by byte: ids and header names are checked on every message
/// received, and walking them as chars cost several times more. In UTF-8 the C1 controls are
/// the only characters whose first byte is 0xC2 and second at most 0x9F; any 0xC2 sends the
/// text to the char walk, which rules on it.
pub(crate) fn has_control(text: &str) -> bool {
    // No early exit, so the loop compiles to a branch-free (vectorised) scan.
    let suspect = text.as_bytes().iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
    });
    suspect && text.chars().any(char::is_control)
}

/// Each byte's value as a hex digit, lower case only; 0xFF for every other byte.
const LOWER_HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Where each of a UUID's 16 bytes starts in its hyphenated text.
const UUID_BYTE_AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// The UUID whose canonical text (lower-case hex, hyphenated: what `Display` prints) is
/// exactly `text`; `None` for any other text, another spelling of a UUID included.
fn parse_canonical_uuid(text: &[u8]) -> Option<Uuid> {
    let text: &[u8; uuid::fmt::Hyphenated::LENGTH] = text.try_into().ok()?;
    if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
        return None;
    }
    let mut bytes = [0u8; 16];
    // Any byte that is not a lower-case hex digit reads as 0xFF and sets the high nibble.
    let mut invalid = 0u8;
    for (byte, &at) in bytes.iter_mut().zip(UUID_BYTE_AT.iter()) {
        let high = LOWER_HEX[usize::from(text[at])];
        let low = LOWER_HEX[usize::from(text[at + 1])];
        invalid |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    (invalid & 0xf0 == 0).then(|| Uuid::from_bytes(bytes))
}

/// Per thread: the next count and the key mixed into it. Seeded on first use from the
/// operating system's randomness (through a version-4 UUID).
struct IdCounter {
    next: std::cell::Cell<u64>,
    key: std::cell::Cell<u64>,
    seeded: std::cell::Cell<bool>,
}

thread_local! {
    static ID_COUNTER: IdCounter = const {
        IdCounter {
            next: std::cell::Cell::new(0),
            key: std::cell::Cell::new(0),
            seeded: std::cell::Cell::new(false),
        }
    };
}

/// A bijective 64-bit mix (the `splitmix64` finaliser): distinct counts give distinct,
/// random-looking words.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn next_counted_uuid() -> Uuid {
    let (count, key) = ID_COUNTER
        .try_with(|c| {
            if !c.seeded.get() {
                let (start, key) = Uuid::new_v4().as_u64_pair();
                c.next.set(start);
                c.key.set(key);
                c.seeded.set(true);
            }
            let count = c.next.get();
            c.next.set(count.wrapping_add(1));
            (count, c.key.get())
        })
        // A thread being torn down has no counter left: a random id is still unique.
        .unwrap_or_else(|_| Uuid::new_v4().as_u64_pair());
    // The variant takes the top two bits of the low half, so the count keeps its low 62.
    let high = mix(count ^ key);
    let low = count & ((1 << 62) - 1);
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdRepr::Uuid(u) => fmt::Display::fmt(&u.hyphenated(), f),
            IdRepr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Milliseconds since the Unix epoch: the precision every backend can carry exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The current wall-clock time, truncated to milliseconds.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// A timestamp from milliseconds since the epoch.
    pub fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// A timestamp from a `SystemTime`, truncated to milliseconds (times before 1970 clamp to 0).
    pub fn from_system_time(time: SystemTime) -> Self {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
            .unwrap_or(0);
        Timestamp(millis)
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// As a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

/// A message: payload bytes with headers, an optional key and a stable id.
///
/// Cloning is cheap: the payload is reference-counted. Equality compares everything a broker
/// carries (id, key, payload, headers, timestamp), not the send-time `delay`.
#[derive(Clone)]
pub struct Message {
    id: MessageId,
    key: Option<Key>,
    payload: Bytes,
    headers: Headers,
    timestamp: Option<Timestamp>,
    delay: Option<Duration>,
}

/// A key as text, or as bytes when it is not UTF-8 (a Kafka record key may be anything).
#[derive(Clone, PartialEq, Eq)]
enum Key {
    Text(Arc<str>),
    Bytes(Arc<[u8]>),
}

impl Key {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Text(t) => t.as_bytes(),
            Key::Bytes(b) => b,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Text(t) => fmt::Debug::fmt(t, f),
            Key::Bytes(b) => write!(f, "Bytes({:?})", Bytes::copy_from_slice(b)),
        }
    }
}

/// Check a key's length.
fn validate_key_len(len: usize) -> Result<()> {
    if len > MAX_KEY_BYTES {
        return Err(Error::invalid_input(format!(
            "message key is {len} bytes; at most {MAX_KEY_BYTES} are allowed"
        )));
    }
    Ok(())
}

impl Message {
    /// A message with this payload, a fresh id and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            id: MessageId::generate(),
            key: None,
            payload: payload.into(),
            headers: Headers::new(),
            timestamp: None,
            delay: None,
        }
    }

    /// A builder that validates every part when `build` is called.
    pub fn builder(payload: impl Into<Bytes>) -> MessageBuilder {
        MessageBuilder {
            message: Message::new(payload),
            error: None,
        }
    }

    /// The stable id.
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// The ordering / partitioning key, if it is text. A key that is not UTF-8 is only in
    /// [`Message::key_bytes`].
    pub fn key(&self) -> Option<&str> {
        match &self.key {
            Some(Key::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The key's bytes, text or not.
    pub fn key_bytes(&self) -> Option<&[u8]> {
        self.key.as_ref().map(Key::as_bytes)
    }

    /// Whether the key is bytes that are not UTF-8 (so [`Message::key`] is `None`).
    pub fn has_binary_key(&self) -> bool {
        matches!(self.key, Some(Key::Bytes(_)))
    }

    /// This message with its key set from bytes (at most [`MAX_KEY_BYTES`]); bytes that are
    /// UTF-8 become a text key, so [`Message::key`] reads them.
    pub fn with_key_bytes(mut self, key: &[u8]) -> Result<Self> {
        validate_key_len(key.len())?;
        self.key = Some(match std::str::from_utf8(key) {
            Ok(text) => Key::Text(Arc::from(text)),
            Err(_) => Key::Bytes(Arc::from(key)),
        });
        Ok(self)
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers, in insertion order.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Mutable headers, for middleware that stamps messages.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The producer-side timestamp, if one was set.
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.timestamp
    }

    /// How long the broker should hold the message before delivering it (send-side only).
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    /// Clear the send-side delay (a backend does this once it has applied it).
    pub fn clear_delay(&mut self) {
        self.delay = None;
    }

    /// Total bytes a broker must carry: payload, key, id and headers.
    pub fn encoded_len(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, |k| k.as_bytes().len())
            + self.headers.encoded_len()
            + 36
    }

    /// Take the parts apart (for backends that translate a message to their wire format).
    ///
    /// `MessageParts::key` holds a text key only: read a key that is not UTF-8 with
    /// [`Message::key_bytes`] first and put it back with [`Message::with_key_bytes`], or use
    /// [`Message::into_parts_and_binary_key`].
    pub fn into_parts(self) -> MessageParts {
        self.into_parts_and_binary_key().0
    }

    /// Take the parts apart, with a key that is not UTF-8 beside them (`MessageParts::key` is
    /// then `None`); [`Message::from_parts_and_binary_key`] puts them back together.
    pub fn into_parts_and_binary_key(self) -> (MessageParts, Option<Arc<[u8]>>) {
        let (key, binary_key) = match self.key {
            Some(Key::Text(t)) => (Some(t), None),
            Some(Key::Bytes(b)) => (None, Some(b)),
            None => (None, None),
        };
        let parts = MessageParts {
            id: self.id,
            key,
            payload: self.payload,
            headers: self.headers,
            timestamp: self.timestamp,
            delay: self.delay,
        };
        (parts, binary_key)
    }

    /// Reassemble a message from parts and a key that is not UTF-8 (which wins over
    /// `parts.key`), the inverse of [`Message::into_parts_and_binary_key`].
    pub fn from_parts_and_binary_key(parts: MessageParts, binary_key: Option<Arc<[u8]>>) -> Self {
        let mut message = Message::from_parts(parts);
        if let Some(key) = binary_key {
            message.key = Some(match std::str::from_utf8(&key) {
                Ok(text) => Key::Text(Arc::from(text)),
                Err(_) => Key::Bytes(key),
            });
        }
        message
    }

    /// Reassemble a message from parts, as a backend does when it receives one.
    pub fn from_parts(parts: MessageParts) -> Self {
        Message {
            id: parts.id,
            key: parts.key.map(Key::Text),
            payload: parts.payload,
            headers: parts.headers,
            timestamp: parts.timestamp,
            delay: parts.delay,
        }
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.key == other.key
            && self.payload == other.payload
            && self.headers == other.headers
            && self.timestamp == other.timestamp
    }
}

impl Eq for Message {}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can be large or sensitive; their length is enough to debug with.
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("timestamp", &self.timestamp)
            .field("delay", &self.delay)
            .finish()
    }
}

/// The parts of a message, public so backends can translate to and from wire formats.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct MessageParts {
    pub id: MessageId,
    pub key: Option<Arc<str>>,
    pub payload: Bytes,
    pub headers: Headers,
    pub timestamp: Option<Timestamp>,
    pub delay: Option<Duration>,
}

/// Builds a [`Message`], reporting the first invalid part when `build` is called.
#[must_use]
pub struct MessageBuilder {
    message: Message,
    error: Option<Error>,
}

impl MessageBuilder {
    fn record(&mut self, result: Result<()>) {
        if let (Err(e), None) = (result, &self.error) {
            self.error = Some(e);
        }
    }

    /// Add or replace a header (names and values are validated).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let result = self.message.headers.insert(name, value);
        self.record(result);
        self
    }

    /// Set the ordering / partitioning key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        match validate_key_len(key.len()) {
            Ok(()) => self.message.key = Some(Key::Text(Arc::from(key))),
            Err(e) => self.record(Err(e)),
        }
        self
    }

    /// Set the key from bytes; UTF-8 bytes become a text key (see [`Message::with_key_bytes`]).
    pub fn key_bytes(mut self, key: impl AsRef<[u8]>) -> Self {
        let key = key.as_ref();
        match validate_key_len(key.len()) {
            Ok(()) => {
                self.message.key = Some(match std::str::from_utf8(key) {
                    Ok(text) => Key::Text(Arc::from(text)),
                    Err(_) => Key::Bytes(Arc::from(key)),
                })
            }
            Err(e) => self.record(Err(e)),
        }
        self
    }

    /// Add or replace a header of any form (see [`Headers::insert_value`]).
    pub fn header_value(
        mut self,
        name: impl Into<String>,
        value: impl Into<crate::headers::HeaderValue>,
    ) -> Self {
        let result = self.message.headers.insert_value(name, value);
        self.record(result);
        self
    }

    /// Add a header after the others, keeping earlier values of the name (see
    /// [`Headers::append`]).
    pub fn append_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<crate::headers::HeaderValue>,
    ) -> Self {
        let result = self.message.headers.append(name, value);
        self.record(result);
        self
    }

    /// Use this id instead of a generated one (e.g. to make a retry deduplicable).
    pub fn id(mut self, id: impl AsRef<str>) -> Self {
        match MessageId::parse(id.as_ref()) {
            Ok(id) => self.message.id = id,
            Err(e) => self.record(Err(e)),
        }
        self
    }

    /// Use an id that is already a [`MessageId`].
    pub fn message_id(mut self, id: MessageId) -> Self {
        self.message.id = id;
        self
    }

    /// Set the timestamp.
    pub fn timestamp(mut self, timestamp: Timestamp) -> Self {
        self.message.timestamp = Some(timestamp);
        self
    }

    /// Stamp the current time.
    pub fn timestamp_now(self) -> Self {
        self.timestamp(Timestamp::now())
    }

    /// Ask the broker to hold the message this long before delivering it.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.message.delay = Some(delay);
        self
    }

    /// The message, or the first invalid part.
    pub fn build(self) -> Result<Message> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn generated_ids_round_trip_through_text() {
        let id = MessageId::generate();
        let text = id.to_string();
        assert_eq!(MessageId::parse(&text).unwrap(), id);
        let custom = MessageId::parse("order-42").unwrap();
        assert_eq!(custom.to_string(), "order-42");
    }

    #[test]
    fn only_the_canonical_uuid_text_becomes_the_binary_id() {
        let id = MessageId::generate();
        let text = id.to_string();
        // Other spellings of the same UUID are ids of their own, kept as they were written.
        for other in [
            text.to_uppercase(),
            text.replace('-', ""),
            format!("{{{text}}}"),
            format!("urn:uuid:{text}"),
        ] {
            let parsed = MessageId::parse(&other).unwrap();
            assert_ne!(parsed, id, "{other}");
            assert_eq!(parsed.to_string(), other);
        }
        assert_eq!(MessageId::parse(&text).unwrap(), id);
    }

    #[test]
    fn generated_ids_are_distinct_uuids_whose_text_leads_differ() {
        let ids: Vec<MessageId> = (0..10_000).map(|_| MessageId::generate()).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "no id repeats");
        // Callers cut the first 8 characters as a run suffix: they must differ too.
        let leads: std::collections::HashSet<String> = ids
            .iter()
            .map(|id| id.to_string()[..8].to_string())
            .collect();
        assert!(leads.len() > 9_900, "only {} distinct leads", leads.len());
        let text = ids[0].to_string();
        let uuid = Uuid::parse_str(&text).unwrap();
        assert_eq!(uuid.get_version_num(), 8);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        // Another thread counts from elsewhere, and its ids differ from these.
        let other = std::thread::spawn(MessageId::generate).join().unwrap();
        assert!(!distinct.contains(&other));
    }

    #[test]
    fn builder_reports_the_first_invalid_part() {
        let err = Message::builder("x")
            .header("", "v")
            .key("k")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("header name"), "{err}");

        let err = Message::builder("x").id("").build().unwrap_err();
        assert!(err.message().contains("id is empty"));

        let err = Message::builder("x")
            .key("k".repeat(MAX_KEY_BYTES + 1))
            .build()
            .unwrap_err();
        assert!(err.message().contains("key is"));
    }

    #[test]
    fn equality_ignores_send_side_delay() {
        let a = Message::builder("p")
            .id("same")
            .delay(Duration::from_secs(1))
            .build()
            .unwrap();
        let b = Message::builder("p").id("same").build().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn binary_keys_are_kept_as_bytes_and_text_keys_stay_text() {
        let m = Message::builder("p")
            .key_bytes(b"\xff\x00k")
            .build()
            .unwrap();
        assert_eq!(m.key(), None);
        assert_eq!(m.key_bytes(), Some(&b"\xff\x00k"[..]));
        assert!(m.has_binary_key());
        let (parts, binary) = m.clone().into_parts_and_binary_key();
        assert_eq!(parts.key, None);
        assert_eq!(Message::from_parts_and_binary_key(parts, binary), m);
        let text = Message::new("p").with_key_bytes(b"plain").unwrap();
        assert_eq!(text.key(), Some("plain"));
        assert!(!text.has_binary_key());
        assert!(Message::new("p")
            .with_key_bytes(&[0xff; MAX_KEY_BYTES + 1])
            .is_err());
    }

    #[test]
    fn ids_from_the_wire_are_kept_or_derived_the_same_every_time() {
        let (id, derived) = MessageId::from_wire(b"order-1");
        assert_eq!((id.to_string().as_str(), derived), ("order-1", false));
        for raw in [&b"has\ttab"[..], b"", b"\xff\xfe", &[b'a'; 300]] {
            let (a, derived) = MessageId::from_wire(raw);
            assert!(derived, "{raw:?}");
            assert_eq!(a, MessageId::from_wire(raw).0, "stable");
            assert_eq!(MessageId::parse(&a.to_string()).unwrap(), a, "printable");
        }
        assert_ne!(MessageId::derive(b"a\tb"), MessageId::derive(b"a\tc"));
        // Fixed across releases: a consumer may have stored ids derived before.
        assert_eq!(
            MessageId::derive(b"a\tb").to_string(),
            "be587959-bfdf-89bb-9ee1-82f5a08d476a"
        );
    }

    #[test]
    fn control_characters_are_found_byte_by_byte_as_char_by_char() {
        let samples = [
            "plain",
            "tab\there",
            "del\u{7f}",
            "c1\u{85}x",
            "c1 last\u{9f}",
            "\u{a0}nbsp",
            "é accent",
            "€ and \u{80}",
            "\u{c2}\u{a9}",
            "日本",
            "",
        ];
        for text in samples {
            assert_eq!(
                has_control(text),
                text.chars().any(char::is_control),
                "{text:?}"
            );
        }
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let text = format!("a{c}b");
            assert_eq!(has_control(&text), c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn the_one_pass_uuid_reader_accepts_the_canonical_text_only() {
        for _ in 0..1000 {
            let uuid = Uuid::new_v4();
            let text = uuid.hyphenated().to_string();
            assert_eq!(parse_canonical_uuid(text.as_bytes()), Some(uuid));
            assert_eq!(parse_canonical_uuid(text.to_uppercase().as_bytes()), None);
        }
        let text = "be587959-bfdf-89bb-9ee1-82f5a08d476a";
        assert!(parse_canonical_uuid(text.as_bytes()).is_some());
        // Every single-byte change is refused unless it is another lower-case hex digit.
        for at in 0..text.len() {
            for b in 0..=255u8 {
                let mut changed = text.as_bytes().to_vec();
                changed[at] = b;
                let expected = std::str::from_utf8(&changed).ok().and_then(|t| {
                    let u = Uuid::parse_str(t).ok()?;
                    (u.hyphenated().to_string() == t).then_some(u)
                });
                assert_eq!(parse_canonical_uuid(&changed), expected, "{at} {b}");
            }
        }
        assert_eq!(parse_canonical_uuid(&text.as_bytes()[1..]), None);
        assert_eq!(parse_canonical_uuid(format!("{text}0").as_bytes()), None);
    }

    #[test]
    fn debug_does_not_print_the_payload() {
        let m = Message::new("secret-payload");
        assert!(!format!("{m:?}").contains("secret-payload"));
    }
}
