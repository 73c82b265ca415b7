//! Ordered, validated message headers.

use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::error::{Error, Result};
pub use crate::header_value::{HeaderValue, MAX_HEADER_VALUE_DEPTH};

/// Longest header name accepted, in bytes (AMQP's short-string limit).
pub const MAX_HEADER_NAME_BYTES: usize = 255;
/// Longest header value accepted, in bytes; larger data belongs in the payload.
pub const MAX_HEADER_VALUE_BYTES: usize = 64 * 1024;

/// Message headers: names in insertion order, each with a [`HeaderValue`].
///
/// Most values are text, and the text API (`insert`, `get`, `iter`) reads and writes only
/// text, as it always has. Values a broker carries as bytes or typed (a Kafka header that is not
/// UTF-8, an AMQP integer or table) are kept as they came, through [`Headers::insert_value`],
/// [`Headers::get_value`] and [`Headers::values`]. A name may repeat where the broker allows it
/// (Kafka): [`Headers::append`] adds another value, [`Headers::get_all`] reads them all, and
/// `insert` replaces them all with one.
///
/// Cloning is cheap: the entries are shared, and copied only when a clone is changed. A
/// backend keeps a copy of each received message to dead-letter or requeue it, and copying
/// every name and value for that cost as much as decoding them.
#[derive(Clone, Default)]
pub struct Headers {
    /// `None` when there are none, so that a message without headers allocates nothing.
    entries: Option<Arc<Entries>>,
}

/// Two entries are kept inline, beside the reference counts: most messages carry one or two
/// headers (a received one usually one or two besides mailroom's own), and they then cost one
/// allocation for the list instead of two (the `Arc` and a `Vec`'s buffer).
type Entries = SmallVec<[(String, HeaderValue); 2]>;

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers { entries: None }
    }

    fn entries(&self) -> &[(String, HeaderValue)] {
        self.entries.as_deref().map_or(&[], SmallVec::as_slice)
    }

    /// The entries to change, copied first if a clone shares them.
    fn entries_mut(&mut self) -> &mut Entries {
        Arc::make_mut(self.entries.get_or_insert_with(Default::default))
    }

    /// Check a header name: non-empty, at most [`MAX_HEADER_NAME_BYTES`], no control characters.
    pub fn validate_name(name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid_input("header name is empty"));
        }
        if name.len() > MAX_HEADER_NAME_BYTES {
            return Err(Error::invalid_input(format!(
                "header name '{}...' is {} bytes; at most {MAX_HEADER_NAME_BYTES} are allowed",
                name.chars().take(32).collect::<String>(),
                name.len()
            )));
        }
        if crate::message::has_control(name) {
            return Err(Error::invalid_input(format!(
                "header name {name:?} contains a control character"
            )));
        }
        Ok(())
    }

    /// Check a header value's size.
    pub fn validate_value(name: &str, value: &str) -> Result<()> {
        Self::validate_len(name, value.len())
    }

    fn validate_len(name: &str, len: usize) -> Result<()> {
        if len > MAX_HEADER_VALUE_BYTES {
            return Err(Error::invalid_input(format!(
                "header '{name}' value is {len} bytes; at most {MAX_HEADER_VALUE_BYTES} are allowed \
                 (put large data in the payload)"
            )));
        }
        Ok(())
    }

    /// Check a value of any form: its size ([`HeaderValue::encoded_len`]), its nesting (at most
    /// [`MAX_HEADER_VALUE_DEPTH`]) and the names in its tables (at most
    /// [`MAX_HEADER_NAME_BYTES`], as AMQP table keys are).
    pub fn validate_typed_value(name: &str, value: &HeaderValue) -> Result<()> {
        if let HeaderValue::Text(text) = value {
            return Self::validate_value(name, text);
        }
        if value.depth() > MAX_HEADER_VALUE_DEPTH {
            return Err(Error::invalid_input(format!(
                "header '{name}' nests arrays or tables {} deep; at most \
                 {MAX_HEADER_VALUE_DEPTH} levels are allowed",
                value.depth()
            )));
        }
        Self::validate_len(name, value.encoded_len())?;
        fn keys_ok(value: &HeaderValue) -> bool {
            match value {
                HeaderValue::Table(entries) => entries
                    .iter()
                    .all(|(k, v)| k.len() <= MAX_HEADER_NAME_BYTES && keys_ok(v)),
                HeaderValue::Array(items) => items.iter().all(keys_ok),
                _ => true,
            }
        }
        if !keys_ok(value) {
            return Err(Error::invalid_input(format!(
                "header '{name}' holds a table key longer than {MAX_HEADER_NAME_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Set a text header, replacing every existing value of the same name (the first in place).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Result<()> {
        self.insert_value(name, HeaderValue::Text(value.into()))
    }

    /// Set a header of any form, replacing every existing value of the same name (the first in
    /// place).
    pub fn insert_value(
        &mut self,
        name: impl Into<String>,
        value: impl Into<HeaderValue>,
    ) -> Result<()> {
        let name = name.into();
        let value = value.into();
        Self::validate_name(&name)?;
        Self::validate_typed_value(&name, &value)?;
        let entries = self.entries_mut();
        match entries.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                entries[first].1 = value;
                let mut index = 0;
                entries.retain(|(n, _)| {
                    index += 1;
                    index - 1 <= first || *n != name
                });
            }
            None => entries.push((name, value)),
        }
        Ok(())
    }

    /// Add a header after the others, keeping any value the name already has (for brokers
    /// whose headers may repeat a name, as Kafka's may).
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Result<()> {
        let name = name.into();
        let value = value.into();
        Self::validate_name(&name)?;
        Self::validate_typed_value(&name, &value)?;
        self.entries_mut().push((name, value));
        Ok(())
    }

    /// Remove every value of a header, returning the first if it was text.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.remove_values(name)
            .into_iter()
            .next()
            .and_then(|v| match v {
                HeaderValue::Text(t) => Some(t),
                _ => None,
            })
    }

    /// Remove every value of a header, returning them in order.
    pub fn remove_values(&mut self, name: &str) -> Vec<HeaderValue> {
        let mut removed = Vec::new();
        if !self.contains(name) {
            // Nothing to take: a shared list stays shared.
            return removed;
        }
        let entries = self.entries_mut();
        let mut kept = Entries::with_capacity(entries.len());
        for (n, v) in entries.drain(..) {
            if n == name {
                removed.push(v);
            } else {
                kept.push((n, v));
            }
        }
        self.entries = (!kept.is_empty()).then(|| Arc::new(kept));
        removed
    }

    /// The first value of a header, if it is text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_value(name).and_then(HeaderValue::as_text)
    }

    /// The first value of a header, of any form.
    pub fn get_value(&self, name: &str) -> Option<&HeaderValue> {
        self.entries()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Every value of a header, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.entries()
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Whether a header is present (with a value of any form).
    pub fn contains(&self, name: &str) -> bool {
        self.entries().iter().any(|(n, _)| n == name)
    }

    /// The text headers in insertion order; headers of other forms are in [`Headers::values`].
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        TextEntries {
            entries: self.entries().iter(),
            remaining: self
                .entries()
                .iter()
                .filter(|(_, v)| v.as_text().is_some())
                .count(),
        }
    }

    /// Every header in insertion order, with its value of any form.
    pub fn values(&self) -> impl ExactSizeIterator<Item = (&str, &HeaderValue)> {
        self.entries().iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Whether some name has more than one value (compared pairwise: no allocation, and
    /// messages carry few headers).
    pub fn has_repeated_names(&self) -> bool {
        let e = self.entries();
        (1..e.len()).any(|i| e[..i].iter().any(|(n, _)| *n == e[i].0))
    }

    /// The first name with more than one value.
    pub fn first_repeated_name(&self) -> Option<&str> {
        let e = self.entries();
        (1..e.len())
            .find(|&i| e[..i].iter().any(|(n, _)| *n == e[i].0))
            .map(|i| e[i].0.as_str())
    }

    /// Whether every value is text (so [`Headers::iter`] sees them all).
    pub fn is_all_text(&self) -> bool {
        self.entries().iter().all(|(_, v)| v.as_text().is_some())
    }

    /// Number of headers, of every form (a repeated name counts once per value).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Bytes of names and values together.
    pub fn encoded_len(&self) -> usize {
        self.entries()
            .iter()
            .map(|(n, v)| n.len() + v.encoded_len())
            .sum()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for Headers {}

/// The text entries of a header list, counted up front so the iterator knows its length.
struct TextEntries<'a> {
    entries: std::slice::Iter<'a, (String, HeaderValue)>,
    remaining: usize,
}

impl<'a> Iterator for TextEntries<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        for (n, v) in self.entries.by_ref() {
            if let HeaderValue::Text(t) = v {
                self.remaining -= 1;
                return Some((n.as_str(), t.as_str()));
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for TextEntries<'_> {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.values()).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_in_place_and_keeps_order() {
        let mut h = Headers::new();
        h.insert("a", "1").unwrap();
        h.insert("b", "2").unwrap();
        h.insert("a", "3").unwrap();
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("a", "3"), ("b", "2")]);
        assert_eq!(h.remove("a").as_deref(), Some("3"));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_clone_is_shared_until_one_side_changes() {
        let mut original = Headers::new();
        original.insert("a", "1").unwrap();
        let mut clone = original.clone();
        assert!(
            std::ptr::eq(original.entries(), clone.entries()),
            "a clone shares the entries"
        );
        clone.insert("a", "2").unwrap();
        clone.append("b", "3").unwrap();
        assert_eq!(original.iter().collect::<Vec<_>>(), [("a", "1")]);
        assert_eq!(clone.iter().collect::<Vec<_>>(), [("a", "2"), ("b", "3")]);
        let mut emptied = original.clone();
        assert_eq!(emptied.remove("a").as_deref(), Some("1"));
        assert!(emptied.is_empty() && emptied == Headers::new());
        assert_eq!(
            original.get("a"),
            Some("1"),
            "the removal did not reach the original"
        );
        // Nothing to remove leaves a shared list shared.
        let mut untouched = original.clone();
        assert!(untouched.remove_values("zz").is_empty());
        assert!(std::ptr::eq(original.entries(), untouched.entries()));
    }

    #[test]
    fn oversize_or_invalid_headers_are_named_in_the_error() {
        let mut h = Headers::new();
        let err = h
            .insert("big", "x".repeat(MAX_HEADER_VALUE_BYTES + 1))
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("header 'big' value is 65537 bytes"));
        assert!(h.insert("bad\nname", "v").is_err());
        assert!(h.insert("n".repeat(256), "v").is_err());
        assert!(h.is_empty());
    }

    #[test]
    fn repeated_names_are_kept_by_append_and_replaced_by_insert() {
        let mut h = Headers::new();
        h.append("a", "1").unwrap();
        h.append("b", HeaderValue::Bytes(bytes::Bytes::from_static(b"\xff")))
            .unwrap();
        h.append("a", HeaderValue::I32(2)).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(
            h.get_all("a").collect::<Vec<_>>(),
            [&HeaderValue::from("1"), &HeaderValue::I32(2)]
        );
        // The text view sees text only, and says so in its length.
        let text = h.iter();
        assert_eq!(text.len(), 1);
        assert_eq!(text.collect::<Vec<_>>(), [("a", "1")]);
        assert!(h.contains("b") && h.get("b").is_none());
        assert!(!h.is_all_text());
        assert!(h.has_repeated_names());
        assert_eq!(h.first_repeated_name(), Some("a"));
        h.insert("a", "3").unwrap();
        assert_eq!(
            h.values().map(|(n, _)| n).collect::<Vec<_>>(),
            ["a", "b"],
            "insert replaced both values of a, in the first one's place"
        );
        assert!(!h.has_repeated_names());
        assert_eq!(h.remove_values("b").len(), 1);
        assert_eq!(h.remove("a").as_deref(), Some("3"));
        assert!(h.is_empty());
    }

    #[test]
    fn typed_values_are_validated_for_size_and_depth() {
        let mut h = Headers::new();
        let mut deep = HeaderValue::Null;
        for _ in 0..=MAX_HEADER_VALUE_DEPTH {
            deep = HeaderValue::Array(vec![deep]);
        }
        let err = h.insert_value("deep", deep).unwrap_err();
        assert!(
            err.to_string().contains("nests arrays or tables 33 deep"),
            "{err}"
        );
        let big = HeaderValue::Bytes(vec![0; MAX_HEADER_VALUE_BYTES + 1].into());
        assert!(h.append("big", big).is_err());
        let long_key = HeaderValue::Table(vec![("k".repeat(256), HeaderValue::Null)]);
        assert!(h.insert_value("t", long_key).is_err());
        assert!(h.is_empty());
    }
}
