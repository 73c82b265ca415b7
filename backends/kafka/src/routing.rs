//! Client-side routing: which records of a bound exchange's topic a queue's consumer delivers.
//!
//! Kafka routes nothing, so a consumer of queue `Q` reads every record of each exchange topic
//! `Q` is bound to and asks [`RouteFilter::admits`] whether one of `Q`'s bindings to that
//! exchange matches it (the routing key from the `x-mailroom-routing-key` header, absent meaning
//! the empty key; the application headers for a headers binding). A record nothing matches is
//! settled at once without being delivered, so the group's commit position passes over it like
//! over an acked one. Records of the queue's own topic (sent to the queue, requeued copies) are
//! always delivered.
//!
//! The filter keeps a copy of `Q`'s routes and refreshes it when the process-wide bindings
//! registry's generation moves (one atomic load per record), so a bind or unbind on an
//! exchange the consumer already reads takes effect at its next record.

use std::borrow::Cow;
use std::sync::Arc;

use mailroom_core::wire::{is_timestamp_header, ATTEMPT_HEADER, ID_HEADER, ROUTING_KEY_HEADER};
use mailroom_core::{Headers, Route};
use rdkafka::message::Headers as _;

use crate::topology::Declared;

/// The routes of one queue's bindings, matched against the records of its exchanges' topics.
pub(crate) struct RouteFilter {
    declared: Arc<Declared>,
    queue: Arc<str>,
    generation: u64,
    /// exchange -> the routes of the queue's bindings to it (a handful: searched linearly).
    routes: Vec<(String, Vec<Route>)>,
}

impl RouteFilter {
    /// The filter of `queue`, with its bindings as declared now.
    pub fn new(declared: Arc<Declared>, queue: Arc<str>) -> Self {
        let (generation, routes) = declared.routes(&queue);
        RouteFilter {
            declared,
            queue,
            generation,
            routes,
        }
    }

    /// Whether the queue takes this record: from its own topic always; from an exchange's
    /// topic when one of its bindings to that exchange matches.
    pub fn admits(&mut self, record: &impl rdkafka::Message) -> bool {
        let topic = record.topic();
        if topic == &*self.queue {
            return true;
        }
        if self.declared.generation() != self.generation {
            (self.generation, self.routes) = self.declared.routes(&self.queue);
        }
        let Some((_, routes)) = self.routes.iter().find(|(e, _)| e == topic) else {
            // Unbound since the consumer subscribed: nothing of this exchange is for the queue.
            return false;
        };
        if routes.iter().any(|r| matches!(r, Route::All)) {
            return true;
        }
        let routing_key = header(record, ROUTING_KEY_HEADER).unwrap_or_default();
        let needs_headers = routes.iter().any(|r| matches!(r, Route::Headers { .. }));
        let headers = if needs_headers {
            app_headers(record)
        } else {
            Headers::new()
        };
        routes.iter().any(|r| r.matches(&routing_key, &headers))
    }
}

/// One header's value as text, if the record carries it (borrowed when it is UTF-8).
fn header<'r>(record: &'r impl rdkafka::Message, name: &str) -> Option<Cow<'r, str>> {
    let headers = record.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()))
}

/// One of the headers mailroom puts on a record for itself (see `codec.rs`).
fn is_internal(name: &str) -> bool {
    matches!(name, ID_HEADER | ATTEMPT_HEADER | ROUTING_KEY_HEADER) || is_timestamp_header(name)
}

/// The record's headers as a headers binding sees them: the application's, not mailroom's.
fn app_headers(record: &impl rdkafka::Message) -> Headers {
    let mut headers = Headers::new();
    if let Some(hs) = record.headers() {
        for h in hs.iter() {
            // The same headers `codec::decode` takes off: a binding sees what the consumer would.
            if is_internal(h.key) {
                continue;
            }
            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
            // A header the model refuses cannot be matched by a binding either: skip it.
            let _ = headers.insert(h.key, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_core::{Binding, HeaderMatch};
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    fn record(topic: &str, routing_key: Option<&str>, app: &[(&str, &str)]) -> OwnedMessage {
        let mut headers = OwnedHeaders::new();
        if let Some(key) = routing_key {
            headers = headers.insert(Header {
                key: ROUTING_KEY_HEADER,
                value: Some(key),
            });
        }
        for (k, v) in app {
            headers = headers.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        OwnedMessage::new(
            Some(b"p".to_vec()),
            None,
            topic.into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    }

    #[test]
    fn a_record_is_admitted_when_one_binding_of_its_exchange_matches() {
        let declared = Arc::new(Declared::default());
        let topo = |b: &Binding| declared.add_binding(b);
        topo(&Binding::pattern("events", "q", "order.*").unwrap());
        topo(&Binding::pattern("events", "q", "#.eu").unwrap());
        topo(&Binding::key("direct", "q", ""));
        topo(&Binding::headers(
            "hdr",
            "q",
            HeaderMatch::All,
            [("type", "order"), ("region", "eu")],
        ));
        let mut filter = RouteFilter::new(declared.clone(), Arc::from("q"));
        assert!(
            filter.admits(&record("q", None, &[])),
            "the queue's own topic"
        );
        assert!(filter.admits(&record("events", Some("order.created"), &[])));
        assert!(filter.admits(&record("events", Some("invoice.eu"), &[])));
        assert!(!filter.admits(&record("events", Some("invoice.us"), &[])));
        assert!(!filter.admits(&record("events", None, &[])), "empty key");
        assert!(
            filter.admits(&record("direct", None, &[])),
            "empty key, direct ''"
        );
        assert!(!filter.admits(&record("direct", Some("a"), &[])));
        let both = [("type", "order"), ("region", "eu")];
        assert!(filter.admits(&record("hdr", None, &both)));
        assert!(!filter.admits(&record("hdr", None, &[("type", "order")])));
        assert!(!filter.admits(&record("other", Some("order.created"), &[])));
    }

    #[test]
    fn an_unbind_takes_effect_at_the_next_record() {
        let declared = Arc::new(Declared::default());
        let binding = Binding::fanout("events", "q");
        declared.add_binding(&binding);
        let mut filter = RouteFilter::new(declared.clone(), Arc::from("q"));
        assert!(filter.admits(&record("events", Some("x"), &[])));
        declared.remove_binding(&binding);
        assert!(!filter.admits(&record("events", Some("x"), &[])));
    }
}
