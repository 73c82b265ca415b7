//! Ordered, validated message headers.

use std::fmt;

use crate::error::{Error, Result};

/// Longest header name accepted, in bytes (AMQP's short-string limit).
pub const MAX_HEADER_NAME_BYTES: usize = 255;
/// Longest header value accepted, in bytes; larger data belongs in the payload.
pub const MAX_HEADER_VALUE_BYTES: usize = 64 * 1024;

/// Message headers: unique names in insertion order, string values.
///
/// Values are strings because every broker can carry a string exactly (AMQP long strings, Kafka
/// header bytes, SQS string attributes); binary data belongs in the payload.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
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
        if name.chars().any(char::is_control) {
            return Err(Error::invalid_input(format!(
                "header name {name:?} contains a control character"
            )));
        }
        Ok(())
    }

    /// Check a header value's size.
    pub fn validate_value(name: &str, value: &str) -> Result<()> {
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(Error::invalid_input(format!(
                "header '{name}' value is {} bytes; at most {MAX_HEADER_VALUE_BYTES} are allowed \
                 (put large data in the payload)",
                value.len()
            )));
        }
        Ok(())
    }

    /// Set a header, replacing an existing value of the same name in place.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Result<()> {
        let name = name.into();
        let value = value.into();
        Self::validate_name(&name)?;
        Self::validate_value(&name, &value)?;
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((name, value)),
        }
        Ok(())
    }

    /// Remove a header, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let index = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(index).1)
    }

    /// The value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a header is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Headers in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of names and values together.
    pub fn encoded_len(&self) -> usize {
        self.entries.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
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
}
