//! Configuration of the RabbitMQ backend, from code or from an `amqp://` / `amqps://` URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use mailroom_core::url::{
    percent_decode, percent_decode_user_info, query_pairs, redact, split_user_info,
};
use mailroom_core::{DeliveryGuarantee, Error, Result};
use serde::{Deserialize, Serialize};

/// Largest message accepted by default: RabbitMQ 3.x's own `max_message_size` default is
/// 128 MiB, but 4.x lowers it to 16 MiB and large AMQP messages stall a channel for everyone, so
/// the client-side check uses the lower of the two.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Unconfirmed messages one producer keeps in flight by default.
pub const DEFAULT_CONFIRM_WINDOW: usize = 1024;
/// Unacked deliveries one consumer holds by default (`basic.qos` prefetch).
pub const DEFAULT_PREFETCH: u16 = 100;

/// How to reach RabbitMQ and how the backend behaves.
///
/// Every field has a default (see [`RabbitConfig::default`]); the URL form sets the connection
/// part from the URL and the rest from query parameters of the same names, e.g.
/// `amqp://guest:guest@127.0.0.1:5672/%2f?prefetch=200&confirm_window=4096`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitConfig {
    /// Broker host (default `127.0.0.1`).
    pub host: String,
    /// Broker port (default 5672, or 5671 for TLS).
    pub port: u16,
    /// User name (default `guest`).
    pub username: String,
    /// Password (default `guest`); never printed by `Debug` or in errors.
    pub password: String,
    /// Virtual host (default `/`).
    pub vhost: String,
    /// Connect with TLS (`amqps://`, rustls).
    pub tls: bool,
    /// A PEM file of CA certificates to trust for TLS, in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Unconfirmed messages one producer keeps in flight; `enqueue` waits when it is full.
    pub confirm_window: usize,
    /// Default prefetch (QoS) of consumers; `ConsumerOptions::prefetch` overrides it.
    pub prefetch: u16,
    /// Publish with the mandatory flag, so a message no queue takes is an error, not a silent
    /// drop (`NotFound` for a queue destination, `Unroutable` for an exchange).
    pub mandatory: bool,
    /// Publish persistent messages (delivery mode 2), so they survive a broker restart in durable
    /// queues.
    pub persistent: bool,
    /// Largest message (payload, key, headers) accepted, checked before any I/O.
    pub max_message_size: usize,
    /// How long a connect may take, and how long any one request waits for the broker (a
    /// method's reply, a publish's confirm, an ack's hand-over, a close) before the connection
    /// counts as unresponsive and is replaced, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long an operation keeps trying across reconnects after the connection broke or went
    /// silent, in milliseconds, before it gives up with a temporary `Connection` or `Timeout`
    /// error.
    pub reconnect_timeout_ms: u64,
    /// AMQP heartbeat in seconds (0 disables it).
    pub heartbeat_secs: u16,
    /// What producers wait for, unless opened with another
    /// ([`ProducerOptions`](mailroom_core::ProducerOptions)): `confirmed` (publisher confirms,
    /// the default) or `unconfirmed` (confirms off, no mandatory flag: done once written to the
    /// connection, at most once). `?guarantee=unconfirmed`.
    pub guarantee: DeliveryGuarantee,
    /// The type of the queues this backend declares and consumes, unless a queue's spec names
    /// its own `x-queue-type`: `classic` (the default) or `stream` (`?queue_type=stream`: an
    /// append-only log read with `x-stream-offset`, so consumers can replay; see the crate
    /// docs, "Streams"). The backend's capabilities follow it.
    pub queue_type: QueueType,
}

/// The type of queue a backend declares and consumes by default (`?queue_type=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic queues (quorum queues where a spec needs them): a delivery leaves the queue
    /// once it is acked.
    #[default]
    Classic,
    /// Stream queues (`x-queue-type=stream`): messages stay in the log after they are acked
    /// (until its retention removes them); each consumer group keeps its own position.
    Stream,
}

impl QueueType {
    /// The name in URLs and in `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Stream => "stream",
        }
    }
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            host: "127.0.0.1".into(),
            port: 5672,
            username: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            tls: false,
            ca_file: None,
            confirm_window: DEFAULT_CONFIRM_WINDOW,
            prefetch: DEFAULT_PREFETCH,
            mandatory: true,
            persistent: true,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout_ms: 10_000,
            reconnect_timeout_ms: 60_000,
            heartbeat_secs: 10,
            guarantee: DeliveryGuarantee::Confirmed,
            queue_type: QueueType::Classic,
        }
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"***")
            .field("vhost", &self.vhost)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("confirm_window", &self.confirm_window)
            .field("prefetch", &self.prefetch)
            .field("mandatory", &self.mandatory)
            .field("persistent", &self.persistent)
            .field("max_message_size", &self.max_message_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("reconnect_timeout_ms", &self.reconnect_timeout_ms)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("guarantee", &self.guarantee)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

const KNOWN: &str = "prefetch, confirm_window, mandatory, persistent, max_message_size, \
                     connect_timeout_ms, reconnect_timeout_ms, heartbeat_secs, ca_file, guarantee, \
                     queue_type";

impl RabbitConfig {
    /// Parse `amqp[s]://[user[:pass]@]host[:port][/vhost][?param=value&...]`.
    ///
    /// The user info ends at the last `@` before the host; a `/`, `?` or `#` in the user name
    /// or password must be percent-encoded (`%2F`, `%3F`, `%23`), else the URL is a `Config`
    /// error that does not show it ([`mailroom_core::url`]).
    /// The vhost is percent-decoded; an empty path or `/` means the default vhost `/` (write
    /// `%2f` for it explicitly). Unknown parameters are a `Config` error listing the known ones.
    pub fn from_url(url: &str) -> Result<Self> {
        let shown = redact(url);
        let (tls, rest) = if let Some(rest) = url.strip_prefix("amqps://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("amqp://") {
            (false, rest)
        } else {
            return Err(Error::config(format!(
                "RabbitMQ URL must start with amqp:// or amqps://, got {shown}"
            )));
        };
        let mut config = RabbitConfig {
            tls,
            port: if tls { 5671 } else { 5672 },
            ..RabbitConfig::default()
        };
        let (userinfo, after) = split_user_info(url, rest)?;
        let before_query = after.split('?').next().unwrap_or("");
        let (host_port, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i + 1..]),
            None => (before_query, ""),
        };
        if let Some(userinfo) = userinfo {
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            config.username = percent_decode_user_info(user, url)?;
            if let Some(p) = pass {
                config.password = percent_decode_user_info(p, url)?;
            }
        }
        let (host, port) = split_host_port(host_port, &shown)?;
        if host.is_empty() {
            return Err(Error::config(format!("RabbitMQ URL {shown} has no host")));
        }
        config.host = host.to_owned();
        if let Some(port) = port {
            config.port = port;
        }
        config.vhost = match path {
            "" => "/".to_owned(),
            p => percent_decode(p, url)?,
        };
        for (key, value) in query_pairs(url)? {
            config.set(&key, &value, &shown)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn set(&mut self, key: &str, value: &str, shown: &str) -> Result<()> {
        fn num<T: std::str::FromStr>(key: &str, value: &str, shown: &str) -> Result<T> {
            value.parse().map_err(|_| {
                Error::config(format!(
                    "RabbitMQ URL {shown}: {key} must be a non-negative number, got {value:?}"
                ))
            })
        }
        fn flag(key: &str, value: &str, shown: &str) -> Result<bool> {
            value.parse().map_err(|_| {
                Error::config(format!(
                    "RabbitMQ URL {shown}: {key} must be true or false, got {value:?}"
                ))
            })
        }
        match key {
            "prefetch" => self.prefetch = num(key, value, shown)?,
            "confirm_window" => self.confirm_window = num(key, value, shown)?,
            "mandatory" => self.mandatory = flag(key, value, shown)?,
            "persistent" => self.persistent = flag(key, value, shown)?,
            "max_message_size" => self.max_message_size = num(key, value, shown)?,
            "connect_timeout_ms" => self.connect_timeout_ms = num(key, value, shown)?,
            "reconnect_timeout_ms" => self.reconnect_timeout_ms = num(key, value, shown)?,
            "heartbeat_secs" => self.heartbeat_secs = num(key, value, shown)?,
            "ca_file" => self.ca_file = Some(PathBuf::from(value)),
            "guarantee" => {
                self.guarantee = DeliveryGuarantee::parse_offered(
                    value,
                    crate::capabilities(self).delivery_guarantees,
                    crate::BACKEND,
                )?
            }
            "queue_type" => {
                self.queue_type = match value {
                    "classic" => QueueType::Classic,
                    "stream" => QueueType::Stream,
                    other => {
                        return Err(Error::config(format!(
                            "RabbitMQ URL {shown}: queue_type must be classic or stream, got \
                             {other:?}"
                        )))
                    }
                }
            }
            other => {
                return Err(Error::config(format!(
                    "unknown RabbitMQ URL parameter {other:?} in {shown}; known: {KNOWN}"
                )))
            }
        }
        Ok(())
    }

    /// Check the limits: a zero window, prefetch or timeout would stall every operation.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(Error::config("RabbitMQ host is empty"));
        }
        if self.confirm_window == 0 || self.confirm_window > 1_000_000 {
            return Err(Error::config(format!(
                "RabbitMQ confirm_window must be 1..=1000000, got {}",
                self.confirm_window
            )));
        }
        if self.prefetch == 0 {
            return Err(Error::config(
                "RabbitMQ prefetch must be at least 1 (0 would mean unbounded)",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(Error::config("RabbitMQ connect_timeout_ms must be above 0"));
        }
        if self.max_message_size == 0 {
            return Err(Error::config("RabbitMQ max_message_size must be above 0"));
        }
        if self.ca_file.is_some() && !self.tls {
            return Err(Error::config(
                "RabbitMQ ca_file is set but the URL is amqp://; use amqps:// for TLS",
            ));
        }
        Ok(())
    }

    /// The lapin URI this configuration connects to (host, port, credentials, vhost, TLS,
    /// heartbeat, connect timeout). Public so that a raw-lapin baseline (the benchmark
    /// harness's) connects exactly as the backend does. It holds the password: never log it.
    pub fn amqp_uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.username.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(self.heartbeat_secs),
                connection_timeout: Some(self.connect_timeout_ms),
                ..AMQPQueryString::default()
            },
        }
    }

    /// The connection target without secrets, for errors and logs.
    pub fn display_target(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        format!(
            "{scheme}://{}@{}:{}/{}",
            self.username,
            self.host,
            self.port,
            encode_vhost(&self.vhost)
        )
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn reconnect_timeout(&self) -> Duration {
        Duration::from_millis(self.reconnect_timeout_ms)
    }
}

fn encode_vhost(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2f")
}

fn split_host_port<'a>(host_port: &'a str, shown: &str) -> Result<(&'a str, Option<u16>)> {
    // An IPv6 literal keeps its colons inside brackets.
    if let Some(rest) = host_port.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| {
            Error::config(format!("RabbitMQ URL {shown}: unclosed '[' in the host"))
        })?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p, shown)?),
            None if after.is_empty() => None,
            None => {
                return Err(Error::config(format!(
                    "RabbitMQ URL {shown}: unexpected {after:?} after the host"
                )))
            }
        };
        return Ok((host, port));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(parse_port(port, shown)?))),
        None => Ok((host_port, None)),
    }
}

fn parse_port(port: &str, shown: &str) -> Result<u16> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::config(format!(
            "RabbitMQ URL {shown}: port must be 1..=65535, got {port:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let c = RabbitConfig::from_url(
            "amqp://alice:p%40ss@broker.local:5673/prod?prefetch=7&confirm_window=9&mandatory=false",
        )
        .unwrap();
        assert_eq!(c.host, "broker.local");
        assert_eq!(c.port, 5673);
        assert_eq!(c.username, "alice");
        assert_eq!(c.password, "p@ss");
        assert_eq!(c.vhost, "prod");
        // RFC 3986: the user info ends at the last `@`, and a `+` in it is a `+`.
        let bob = RabbitConfig::from_url("amqp://bob:a@b+c%2Fd@h/v").unwrap();
        assert_eq!((bob.password.as_str(), bob.host.as_str()), ("a@b+c/d", "h"));
        assert_eq!(c.prefetch, 7);
        assert_eq!(c.confirm_window, 9);
        assert!(!c.mandatory);
    }

    #[test]
    fn queue_type_is_classic_unless_the_url_asks_for_streams() {
        assert_eq!(RabbitConfig::default().queue_type, QueueType::Classic);
        let c = RabbitConfig::from_url("amqp://h?queue_type=stream").unwrap();
        assert_eq!(c.queue_type, QueueType::Stream);
        let c = RabbitConfig::from_url("amqp://h?queue_type=classic").unwrap();
        assert_eq!(c.queue_type, QueueType::Classic);
        let err = RabbitConfig::from_url("amqp://h?queue_type=quorum").unwrap_err();
        assert_eq!(err.kind(), mailroom_core::ErrorKind::Config);
        assert!(err.to_string().contains("classic or stream"), "{err}");
    }

    #[test]
    fn defaults_and_vhost_forms() {
        let c = RabbitConfig::from_url("amqp://127.0.0.1").unwrap();
        assert_eq!(c, RabbitConfig::default());
        assert_eq!(RabbitConfig::from_url("amqp://h/").unwrap().vhost, "/");
        assert_eq!(RabbitConfig::from_url("amqp://h/%2f").unwrap().vhost, "/");
        let tls = RabbitConfig::from_url("amqps://h?ca_file=/etc/ca.pem").unwrap();
        assert!(tls.tls);
        assert_eq!(tls.port, 5671);
        assert_eq!(
            RabbitConfig::from_url("amqp://[::1]:1/").unwrap().host,
            "::1"
        );
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for bad in [
            "http://h",
            "amqp://u:secret@h:99999",
            "amqp://u:secret@h?prefetch=0",
            "amqp://u:secret@h?prefetch=x",
            "amqp://u:secret@h?bogus=1",
            "amqp://u:secret@h?ca_file=x",
            "amqp://u:secret@",
            "amqp://u:sec/ret@h:5672/%2f",
            "amqp://u:sec?ret@h:5672",
            "amqp://u:secret/x@h",
        ] {
            let e = RabbitConfig::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), mailroom_core::ErrorKind::Config, "{bad}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn the_guarantee_is_confirmed_unless_chosen_and_typos_are_typed_errors() {
        assert_eq!(
            RabbitConfig::from_url("amqp://h").unwrap().guarantee,
            DeliveryGuarantee::Confirmed
        );
        let c = RabbitConfig::from_url("amqp://h?guarantee=unconfirmed").unwrap();
        assert_eq!(c.guarantee, DeliveryGuarantee::Unconfirmed);
        let e = RabbitConfig::from_url("amqp://h?guarantee=fire_and_forget").unwrap_err();
        assert_eq!(e.kind(), mailroom_core::ErrorKind::Config);
        assert!(e.message().contains("\"fire_and_forget\""), "{e}");
        // Kafka's `acks=1` level: RabbitMQ has nothing between a confirm and none.
        let e = RabbitConfig::from_url("amqp://h?guarantee=leader_confirmed").unwrap_err();
        assert_eq!(e.kind(), mailroom_core::ErrorKind::Unsupported);
        assert!(e.message().contains("'leader_confirmed'"), "{e}");
    }

    #[test]
    fn debug_hides_the_password() {
        let c = RabbitConfig::from_url("amqp://u:hunter2@h").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.display_target().contains("hunter2"));
    }
}
