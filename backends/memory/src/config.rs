//! Configuration of the in-memory broker, from code or from a `memory://` URL.

use mailroom_core::url::query_pairs;
use mailroom_core::{Error, Result};

/// Largest message accepted by default: large enough for real payloads, small enough that a
/// runaway producer is caught before it exhausts memory.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How the in-memory broker behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Share one broker between every `connect` of the same name in this process (`memory://NAME`);
    /// `None` opens a private broker.
    pub name: Option<String>,
    /// Largest message (payload, key, headers) accepted, in bytes.
    pub max_message_size: usize,
    /// Whether a message an exchange routes to no queue is an `Unroutable` error (AMQP's mandatory
    /// flag). Off, such messages are dropped, as a fanout with no subscribers would.
    pub mandatory: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            name: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            mandatory: true,
        }
    }
}

impl MemoryConfig {
    /// Parse `memory://[NAME][?max_message_size=BYTES&mandatory=true|false]`.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("memory://").ok_or_else(|| {
            Error::config(format!(
                "memory backend URL must start with memory://, got {url:?}"
            ))
        })?;
        let name = rest.split('?').next().unwrap_or("").trim_end_matches('/');
        let mut config = MemoryConfig {
            name: (!name.is_empty()).then(|| name.to_owned()),
            ..MemoryConfig::default()
        };
        for (key, value) in query_pairs(url)? {
            match key.as_str() {
                "max_message_size" => {
                    config.max_message_size = value.parse().map_err(|_| {
                        Error::config(format!(
                            "memory:// max_message_size must be a number of bytes, got {value:?}"
                        ))
                    })?
                }
                "mandatory" => {
                    config.mandatory = value.parse().map_err(|_| {
                        Error::config(format!(
                            "memory:// mandatory must be true or false, got {value:?}"
                        ))
                    })?
                }
                other => {
                    return Err(Error::config(format!(
                        "unknown memory:// parameter {other:?}; known: max_message_size, mandatory"
                    )))
                }
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_parameters() {
        assert_eq!(
            MemoryConfig::from_url("memory://").unwrap(),
            MemoryConfig::default()
        );
        let c =
            MemoryConfig::from_url("memory://shared?max_message_size=10&mandatory=false").unwrap();
        assert_eq!(c.name.as_deref(), Some("shared"));
        assert_eq!(c.max_message_size, 10);
        assert!(!c.mandatory);
    }

    #[test]
    fn rejects_unknown_or_malformed_parameters() {
        let e = MemoryConfig::from_url("memory://?size=1").unwrap_err();
        assert!(
            e.message().contains("unknown memory:// parameter \"size\""),
            "{e}"
        );
        let e = MemoryConfig::from_url("memory://?max_message_size=big").unwrap_err();
        assert!(e.message().contains("max_message_size"), "{e}");
    }
}
