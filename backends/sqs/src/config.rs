//! Configuration of the SQS backend, from code or from an `sqs://` URL.

use std::fmt;
use std::time::Duration;

use mailroom_core::url::{percent_decode_user_info, query_pairs, redact, split_user_info};
use mailroom_core::{DeliveryGuarantee, DeliveryGuarantees, Error, Result};
use serde::{Deserialize, Serialize};

/// The URL tests and examples use: fauxqs on its default port.
pub const DEFAULT_URL: &str = "sqs://127.0.0.1:4566?region=us-east-1";
/// Largest message by default: body plus attributes, as AWS counts it (1 MiB since 2025).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Static AWS credentials. `Debug` shows only the access key id.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialsSource {
    /// The standard AWS chain without the EC2 instance metadata service: environment, shared
    /// profile, web identity, ECS container (`?credentials=chain`, or no keys in the URL). IMDS
    /// is left out because off EC2 it is a network call that can only fail, slowly, and its
    /// failure buries the real problem (a mistyped host) under a long credentials error.
    Chain,
    /// The standard chain, then the EC2 instance metadata service (IMDSv2), for code running
    /// on EC2 with an instance role (`?credentials=chain_and_imds`).
    ChainAndImds,
    /// These keys.
    Static(StaticCredentials),
}

/// How the SQS backend connects and behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqsConfig {
    /// A custom endpoint (`http://127.0.0.1:4566`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region; `None` takes it from the standard chain (AWS) or `us-east-1` (custom endpoint).
    pub region: Option<String>,
    /// Where credentials come from.
    pub credentials: CredentialsSource,
    /// Largest message, body plus attributes, in bytes; also the total of one batch call.
    pub max_message_size: usize,
    /// Whether messages survive a server restart (true on AWS, false on emulators).
    pub persistence: bool,
    /// How long one receive call waits for messages (long polling, at most 20 s).
    pub wait_time: Duration,
    /// The visibility timeout asked for on receive; `None` keeps the queue's own.
    pub visibility_timeout: Option<Duration>,
    /// Messages a producer holds unconfirmed at once; `enqueue` waits beyond it.
    pub send_window: usize,
    /// Batch calls one queue's batcher keeps in flight at once.
    pub send_concurrency: usize,
    /// How long a batcher waits for a batch to fill before sending a partial one.
    pub linger: Duration,
    /// Bound on establishing a connection to the endpoint.
    pub connect_timeout: Duration,
    /// Bound on one API call, retries included (a receive adds its wait time).
    pub operation_timeout: Duration,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            endpoint: None,
            region: None,
            credentials: CredentialsSource::Chain,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            persistence: true,
            wait_time: Duration::from_secs(20),
            visibility_timeout: None,
            send_window: 10_000,
            send_concurrency: 8,
            linger: Duration::from_millis(1),
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

const PARAMS: &str = "region, tls, credentials, max_message_size, persistence, wait_time_ms, \
                      visibility_timeout_s, send_window, send_concurrency, linger_ms, \
                      connect_timeout_ms, operation_timeout_ms, guarantee";

impl SqsConfig {
    /// Parse `sqs://[KEY_ID:SECRET@][HOST[:PORT]][?region=..&tls=..&...]`.
    ///
    /// A `/` in the secret (AWS secret keys often hold one) must be written `%2F` (`?` as `%3F`,
    /// `#` as `%23`); unencoded, the URL is a `Config` error that does not show it. A `+` is a
    /// `+`.
    /// With a host, the endpoint is `http://HOST:PORT` (`https` with `tls=true`) and persistence
    /// defaults to off (emulators keep nothing); without one, AWS itself. `credentials=chain`
    /// forces the standard chain even for a loopback endpoint; `credentials=chain_and_imds` adds
    /// the EC2 instance metadata service to it (see [`CredentialsSource`]).
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("sqs://").ok_or_else(|| {
            Error::config(format!(
                "SQS backend URL must start with sqs://, got {:?}",
                redact(url)
            ))
        })?;
        let (userinfo, after) = split_user_info(url, rest)?;
        let host = after.split(['?', '/']).next().unwrap_or("");
        let tail = &after[host.len()..];
        if !tail.is_empty() && !tail.starts_with('?') && tail != "/" && !tail.starts_with("/?") {
            return Err(Error::config(format!(
                "sqs:// URL {} has a path; expected sqs://[KEY:SECRET@]HOST:PORT?region=...",
                redact(url)
            )));
        }
        let mut config = SqsConfig::default();
        if let Some(userinfo) = userinfo {
            let (id, secret) = userinfo.split_once(':').ok_or_else(|| {
                Error::config(format!(
                    "sqs:// URL {} has user info without a secret; expected KEY_ID:SECRET@",
                    redact(url)
                ))
            })?;
            let access_key_id = percent_decode_user_info(id, url)?;
            let secret_access_key = percent_decode_user_info(secret, url)?;
            if access_key_id.is_empty() || secret_access_key.is_empty() {
                return Err(Error::config(format!(
                    "sqs:// URL {} has an empty access key id or secret",
                    redact(url)
                )));
            }
            config.credentials = CredentialsSource::Static(StaticCredentials {
                access_key_id,
                secret_access_key,
                session_token: None,
            });
        }
        let mut tls = false;
        let mut force_chain = None;
        let mut persistence = None;
        for (key, value) in query_pairs(url)? {
            let bad = |what: &str| {
                Error::config(format!(
                    "sqs:// parameter {key} must be {what}, got {value:?} in {}",
                    redact(url)
                ))
            };
            let millis = |v: &str| v.parse::<u64>().map(Duration::from_millis);
            match key.as_str() {
                "region" if !value.is_empty() => config.region = Some(value.clone()),
                "region" => return Err(bad("a region name such as us-east-1")),
                "tls" => tls = value.parse().map_err(|_| bad("true or false"))?,
                "credentials" => match value.as_str() {
                    "chain" => force_chain = Some(CredentialsSource::Chain),
                    "chain_and_imds" => force_chain = Some(CredentialsSource::ChainAndImds),
                    _ => {
                        return Err(bad(
                            "chain or chain_and_imds (put static keys in the URL's user info)",
                        ))
                    }
                },
                "max_message_size" => {
                    config.max_message_size = value
                        .parse()
                        .ok()
                        .filter(|n| (1024..=DEFAULT_MAX_MESSAGE_SIZE).contains(n))
                        .ok_or_else(|| bad("a number of bytes from 1024 to 1048576"))?
                }
                "persistence" => {
                    persistence = Some(value.parse().map_err(|_| bad("true or false"))?)
                }
                "wait_time_ms" => {
                    config.wait_time = millis(&value)
                        .ok()
                        .filter(|d| *d <= Duration::from_secs(20))
                        .ok_or_else(|| bad("milliseconds from 0 to 20000"))?
                }
                "visibility_timeout_s" => {
                    config.visibility_timeout = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|s| *s <= 43_200)
                            .map(Duration::from_secs)
                            .ok_or_else(|| bad("seconds from 0 to 43200"))?,
                    )
                }
                "send_window" => {
                    config.send_window = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| bad("a number from 1 to 1000000"))?
                }
                "send_concurrency" => {
                    config.send_concurrency = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| bad("a number from 1 to 256"))?
                }
                // SendMessage and SendMessageBatch answer only once SQS has stored the message,
                // so `confirmed` is the one level there is; naming it is allowed, asking for a
                // weaker one is `Unsupported`, naming it.
                "guarantee" => {
                    DeliveryGuarantee::parse_offered(
                        &value,
                        DeliveryGuarantees::CONFIRMED_ONLY,
                        crate::BACKEND,
                    )?;
                }
                "linger_ms" => config.linger = millis(&value).map_err(|_| bad("milliseconds"))?,
                "connect_timeout_ms" => {
                    config.connect_timeout = millis(&value)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| bad("milliseconds above 0"))?
                }
                "operation_timeout_ms" => {
                    config.operation_timeout = millis(&value)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| bad("milliseconds above 0"))?
                }
                other => {
                    return Err(Error::config(format!(
                        "unknown sqs:// parameter {other:?}; known: {PARAMS}"
                    )))
                }
            }
        }
        if host.is_empty() {
            if tls {
                return Err(Error::config(
                    "sqs:// parameter tls needs a host; AWS itself is always reached over HTTPS",
                ));
            }
        } else {
            validate_host(host, url)?;
            let scheme = if tls { "https" } else { "http" };
            config.endpoint = Some(format!("{scheme}://{host}"));
            config.persistence = false;
            if config.credentials == CredentialsSource::Chain
                && is_loopback(host)
                && force_chain.is_none()
            {
                config.credentials = CredentialsSource::Static(StaticCredentials {
                    access_key_id: "mailroom-local".into(),
                    secret_access_key: "mailroom-local".into(),
                    session_token: None,
                });
            }
        }
        if let Some(p) = persistence {
            config.persistence = p;
        }
        if let (Some(chain), CredentialsSource::Chain) = (force_chain, &config.credentials) {
            config.credentials = chain;
        }
        Ok(config)
    }

    /// Check the values that have bounds.
    pub fn validate(&self) -> Result<()> {
        if !(1024..=DEFAULT_MAX_MESSAGE_SIZE).contains(&self.max_message_size) {
            return Err(Error::config(format!(
                "max_message_size {} is outside SQS's 1024..=1048576 bytes",
                self.max_message_size
            )));
        }
        if self.wait_time > Duration::from_secs(20) {
            return Err(Error::config(format!(
                "wait_time {:?} exceeds SQS's 20 s long-poll maximum",
                self.wait_time
            )));
        }
        if self.send_window == 0 || self.send_concurrency == 0 {
            return Err(Error::config(
                "send_window and send_concurrency must be at least 1",
            ));
        }
        Ok(())
    }
}

fn validate_host(host: &str, url: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if !ok {
        return Err(Error::config(format!(
            "sqs:// URL {} has an invalid host {host:?}",
            redact(url)
        )));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(Error::config(format!(
                "sqs:// URL {} has an invalid port {port:?}",
                redact(url)
            )));
        }
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_and_aws_forms() {
        let c = SqsConfig::from_url("sqs://127.0.0.1:4566?region=us-east-1").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        assert!(!c.persistence);
        assert!(matches!(c.credentials, CredentialsSource::Static(_)));

        let c = SqsConfig::from_url("sqs://?region=eu-west-1").unwrap();
        assert_eq!(c.endpoint, None);
        assert!(c.persistence);
        assert_eq!(c.credentials, CredentialsSource::Chain);

        let c = SqsConfig::from_url("sqs://sqs.example:443?tls=true&credentials=chain").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://sqs.example:443"));
        assert_eq!(c.credentials, CredentialsSource::Chain);

        let c = SqsConfig::from_url("sqs://?region=eu-west-1&credentials=chain_and_imds").unwrap();
        assert_eq!(c.credentials, CredentialsSource::ChainAndImds);
    }

    #[test]
    fn credentials_from_user_info_are_never_printed() {
        let c = SqsConfig::from_url("sqs://AKIDEXAMPLE:s%2Fcr3t@10.0.0.1:4566").unwrap();
        let CredentialsSource::Static(creds) = &c.credentials else {
            panic!("expected static credentials");
        };
        assert_eq!(creds.secret_access_key, "s/cr3t");
        let aws = SqsConfig::from_url("sqs://AKID:wJa%2FK7+bP@10.0.0.1:4566").unwrap();
        let CredentialsSource::Static(aws_creds) = &aws.credentials else {
            panic!("expected static credentials");
        };
        assert_eq!(aws_creds.secret_access_key, "wJa/K7+bP");
        for url in [
            "sqs://AKID:wJa/K7+bP@127.0.0.1:4566?region=us-east-1",
            "sqs://AKID:wJa?K7+bP@127.0.0.1:4566",
        ] {
            let e = SqsConfig::from_url(url).unwrap_err();
            assert_eq!(e.kind(), mailroom_core::ErrorKind::Config);
            assert!(!e.to_string().contains("K7"), "{e}");
            assert!(e.to_string().contains("%2F"), "{e}");
        }
        let printed = format!("{c:?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("cr3t"), "{printed}");
    }

    #[test]
    fn only_the_confirmed_guarantee_is_accepted() {
        assert!(SqsConfig::from_url("sqs://h:1?guarantee=confirmed").is_ok());
        let e = SqsConfig::from_url("sqs://h:1?guarantee=leader_confirmed").unwrap_err();
        assert_eq!(e.kind(), mailroom_core::ErrorKind::Unsupported);
        let e = SqsConfig::from_url("sqs://h:1?guarantee=x").unwrap_err();
        assert_eq!(e.kind(), mailroom_core::ErrorKind::Config);
    }

    #[test]
    fn bad_urls_name_the_problem() {
        for (url, needle) in [
            ("amqp://x", "must start with sqs://"),
            ("sqs://h:1?bogus=1", "unknown sqs:// parameter"),
            ("sqs://h:notaport", "invalid port"),
            ("sqs://h:1?wait_time_ms=60000", "wait_time_ms"),
            ("sqs://h:1/queue", "has a path"),
            ("sqs://key@h:1", "without a secret"),
            ("sqs://?tls=true", "needs a host"),
            (
                "sqs://h:1?guarantee=maybe",
                "unknown delivery guarantee \"maybe\"",
            ),
            ("sqs://h:1?guarantee=unconfirmed", "'unconfirmed'"),
        ] {
            let err = SqsConfig::from_url(url).unwrap_err();
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
    }
}
