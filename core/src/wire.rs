//! The header names mailroom itself puts on the wire, one name for each idea.
//!
//! Every backend that carries one of these facts in a header uses the name here, so a message
//! reads the same whichever broker carried it, and a tool reading a queue directly has one
//! name to look for. A backend's `codec.rs` says which of them it writes (a broker with a
//! native slot for a fact, such as AMQP's `message-id`, uses that instead) and names the few
//! headers only it needs.
//!
//! A name that changes keeps being read, not written, for one release: see
//! [`LEGACY_TIMESTAMP_HEADERS`].

use crate::headers::{HeaderValue, Headers};
use crate::message::MessageId;

pub use crate::delivery::{
    DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SOURCE_HEADER,
};

/// The message id, where the broker has no message-id property of its own.
pub const ID_HEADER: &str = "x-mailroom-id";
/// The message key, where the broker has no key of its own.
pub const KEY_HEADER: &str = "x-mailroom-key";
/// The message's own timestamp, in milliseconds since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "x-mailroom-timestamp-ms";
/// The delivery attempt of a copy a backend republished to requeue it client-side.
pub const ATTEMPT_HEADER: &str = "x-mailroom-attempt";
/// The routing key a message was sent to an exchange with, where the broker routes nothing
/// itself and the consumer matches bindings against it (Kafka). Absent means the empty key.
pub const ROUTING_KEY_HEADER: &str = "x-mailroom-routing-key";
/// The payload's media type. A broker with a content-type property of its own carries this
/// header there (RabbitMQ: the AMQP `content_type` property), the others as a header of this
/// name, as the CloudEvents Kafka binding names it.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// On receive: the id a foreign producer wrote, when mailroom could not accept it as it is
/// (empty, too long, a control character, not UTF-8) and gave the message an id
/// [`MessageId::derive`]d from it instead. Text if the original was UTF-8, bytes otherwise.
pub const ORIGINAL_ID_HEADER: &str = "x-mailroom-original-id";

/// The id for raw id bytes a broker delivered: the id itself when mailroom accepts it; else an
/// id derived from the bytes (the same on every redelivery), with the original kept in
/// `headers` under [`ORIGINAL_ID_HEADER`] so that nothing is silently altered.
pub fn accept_id(raw: &[u8], headers: &mut Headers) -> MessageId {
    let (id, derived) = MessageId::from_wire(raw);
    if derived {
        // At most a broker's id size, far below the value limit; a failure would only mean
        // the original is missing, which the derived id does not depend on.
        let _ = headers.insert_value(ORIGINAL_ID_HEADER, HeaderValue::from_wire_bytes(raw));
    }
    id
}

/// On receive: what a backend had to leave out of a message from another client because
/// mailroom cannot hold it, comma-separated: `header:NAME` for a header (its name with control
/// characters removed, cut to 64 characters), `key` for the key. Present only when something
/// was left out, so a message that was not read whole says so instead of looking complete.
pub const DROPPED_HEADER: &str = "x-mailroom-dropped";

/// Collects what a decode left out, for [`DROPPED_HEADER`].
#[derive(Debug, Default)]
pub struct Dropped(Vec<String>);

impl Dropped {
    /// A header named `name` was left out.
    pub fn header(&mut self, name: &str) {
        let name: String = name
            .chars()
            .filter(|c| !c.is_control() && *c != ',')
            .take(64)
            .collect();
        self.0.push(format!("header:{name}"));
    }

    /// The key was left out.
    pub fn key(&mut self) {
        self.0.push("key".to_owned());
    }

    /// Whether nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Add [`DROPPED_HEADER`] to `headers` if anything was left out.
    pub fn mark(self, headers: &mut Headers) {
        if !self.0.is_empty() {
            let mut list = self.0.join(",");
            // Far more left out than a header holds: the count still says it.
            if list.len() > 4096 {
                list = format!("{} items", self.0.len());
            }
            let _ = headers.insert(DROPPED_HEADER, list);
        }
    }
}

/// Names the timestamp was written under before [`TIMESTAMP_HEADER`]: still read, no longer
/// written. Kafka wrote `x-mailroom-timestamp` until this release; a record still on a topic
/// (retained, or sent by an older producer) decodes with its timestamp.
pub const LEGACY_TIMESTAMP_HEADERS: &[&str] = &["x-mailroom-timestamp"];

/// Whether `name` carries the timestamp, under its name or a name it had before.
pub fn is_timestamp_header(name: &str) -> bool {
    name == TIMESTAMP_HEADER || LEGACY_TIMESTAMP_HEADERS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_is_read_under_its_old_name_too() {
        assert!(is_timestamp_header("x-mailroom-timestamp-ms"));
        assert!(is_timestamp_header("x-mailroom-timestamp"));
        assert!(!is_timestamp_header("x-mailroom-timestamp-us"));
    }

    #[test]
    fn what_was_left_out_is_listed_once_something_was() {
        let mut headers = Headers::new();
        Dropped::default().mark(&mut headers);
        assert!(headers.is_empty());
        let mut dropped = Dropped::default();
        dropped.header("bad\nname,x");
        dropped.key();
        dropped.mark(&mut headers);
        assert_eq!(headers.get(DROPPED_HEADER), Some("header:badnamex,key"));
    }

    #[test]
    fn an_unacceptable_id_is_derived_and_its_original_kept() {
        let mut headers = Headers::new();
        let id = accept_id(b"ok-1", &mut headers);
        assert_eq!(id.to_string(), "ok-1");
        assert!(headers.is_empty());
        let id = accept_id(b"a\tb", &mut headers);
        assert_eq!(id, MessageId::derive(b"a\tb"));
        assert_eq!(headers.get(ORIGINAL_ID_HEADER), Some("a\tb"));
        let mut headers = Headers::new();
        accept_id(b"\xff", &mut headers);
        assert_eq!(
            headers.get_value(ORIGINAL_ID_HEADER),
            Some(&HeaderValue::Bytes(bytes::Bytes::from_static(b"\xff")))
        );
    }
}
