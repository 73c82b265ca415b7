//! The librdkafka client context of the probe client `connect` waits with: librdkafka's log forwarded to
//! `tracing` (target `librdkafka`), and the last failure librdkafka reported while it tried to
//! reach a broker, kept so that a failed `connect` says *why* (a refused password, an untrusted
//! certificate, a listener without SASL) instead of only "cannot reach the Kafka brokers".
//!
//! librdkafka does not fail its metadata request on such a failure: it retries until the
//! timeout. The reasons it gives are only in its error callback and its log, hence this context.
//! librdkafka never puts `sasl.password` or a key in them; the backend's secret-scan test checks
//! that for every failure it diagnoses.

use std::sync::Mutex;

use mailroom_core::operation::CONNECT;
use mailroom_core::{Error, ErrorKind};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::BACKEND;

/// A failure librdkafka reported through its error callback: the code and its reason text.
#[derive(Debug, Clone)]
pub(crate) struct Reported {
    pub code: Option<Code>,
    pub reason: String,
}

/// The probe client's context (see the module docs).
#[derive(Default)]
pub(crate) struct ConnectContext {
    last: Mutex<Option<Reported>>,
}

impl ConnectContext {
    fn record(&self, reported: Reported) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reported);
    }

    /// The last failure librdkafka reported, if any.
    pub fn last_failure(&self) -> Option<Reported> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientContext for ConnectContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
        // A broker connection that failed is logged (facility FAIL) as well as reported to the
        // error callback; a configuration warning (CONFWARN) says nothing about the brokers.
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) && fac != "CONFWARN" {
            self.record(Reported {
                code: None,
                reason: message.to_owned(),
            });
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&error, reason);
        self.record(Reported {
            code: error.rdkafka_error_code(),
            reason: reason.to_owned(),
        });
    }
}

impl ProducerContext for ConnectContext {
    type DeliveryOpaque = ();

    /// The probe sends nothing.
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// librdkafka's log line as a `tracing` event of the matching level, target `librdkafka`.
pub(crate) fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{fac} {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
    }
}

/// librdkafka's error callback as a `tracing` warning, target `librdkafka`: these are the
/// failures it retries by itself (a broker down, a refused login), so not errors of a call.
pub(crate) fn forward_error(error: &KafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", "{error}: {reason}");
}

/// What a failure librdkafka reported means for `connect`, when it is one that waiting longer
/// cannot cure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Diagnosis {
    /// The broker's certificate failed verification: librdkafka (OpenSSL) words an untrusted
    /// CA and a host name the certificate does not list the same, so `connect` tells them
    /// apart with a second probe that skips the host name check.
    CertificateRefused,
    /// The certificate is trusted but does not name the host (found by that second probe).
    HostnameMismatch,
    /// The certificate is not signed by a trusted CA (the second probe failed the same way).
    Untrusted,
    /// The handshake got no TLS answer: the listener does not speak TLS.
    NotTls,
    /// Another TLS handshake failure.
    TlsFailed,
    /// The broker refused the SASL login (user, password or mechanism).
    LoginRefused,
    /// SASL was attempted on a listener without SASL.
    NoSasl,
}

/// The diagnosis of one reported failure, or `None` for one that waiting may cure (a refused
/// or unreachable port, a broker still starting).
pub(crate) fn diagnose(reported: &Reported, config: &KafkaConfig) -> Option<Diagnosis> {
    let lower = reported.reason.to_ascii_lowercase();
    let sasl = config
        .properties
        .get("security.protocol")
        .is_some_and(|p| p.to_ascii_uppercase().starts_with("SASL"));
    Some(if lower.contains("ssl handshake failed") {
        if lower.contains("hostname mismatch") || lower.contains("ip address mismatch") {
            Diagnosis::HostnameMismatch
        } else if lower.contains("certificate verify failed")
            || lower.contains("could not be verified")
        {
            Diagnosis::CertificateRefused
        } else if lower.contains("wrong version number")
            || lower.contains("packet length too long")
            || lower.contains("record layer failure")
            || lower.contains("disconnected")
        {
            Diagnosis::NotTls
        } else {
            Diagnosis::TlsFailed
        }
    } else if matches!(
        reported.code,
        Some(Code::Authentication | Code::SaslAuthenticationFailed)
    ) || lower.contains("sasl authentication error")
        || lower.contains("invalid credentials")
    {
        Diagnosis::LoginRefused
    } else if sasl
        && (lower.contains("unsupportedsaslmechanism")
            || lower.contains("not valid in current sasl state")
            || lower.contains("illegal sasl state")
            || lower.contains("sasl handshake"))
    {
        Diagnosis::NoSasl
    } else {
        return None;
    })
}

/// The typed error of a diagnosis: `Tls`, `Auth` or `Config`, permanent, saying what to fix,
/// with librdkafka's own words after mailroom's.
pub(crate) fn error_for(diagnosis: Diagnosis, reported: &Reported, config: &KafkaConfig) -> Error {
    let servers = config.bootstrap_servers();
    let protocol = config
        .properties
        .get("security.protocol")
        .map(|p| p.to_ascii_uppercase())
        .unwrap_or_else(|| "PLAINTEXT".to_owned());
    let mechanism = config
        .properties
        .get("sasl.mechanism")
        .map(String::as_str)
        .unwrap_or("GSSAPI");
    let roots = match config.properties.get("ssl.ca.location") {
        Some(ca) => format!("ssl.ca.location {ca}"),
        None => "OpenSSL's default roots (no ssl.ca.location)".to_owned(),
    };
    let (kind, message) = match diagnosis {
        Diagnosis::HostnameMismatch => (
            ErrorKind::Tls,
            format!(
                "the TLS certificate of the Kafka broker at {servers} does not name the host \
                 connected to (hostname mismatch; it is signed by a trusted CA): connect by a \
                 name the certificate lists, or fix the broker's certificate"
            ),
        ),
        Diagnosis::Untrusted => (
            ErrorKind::Tls,
            format!(
                "the TLS certificate of the Kafka broker at {servers} is not trusted: no CA in \
                 {roots} signed it; set ssl.ca.location to the CA file that did"
            ),
        ),
        Diagnosis::CertificateRefused => (
            ErrorKind::Tls,
            format!(
                "the TLS certificate of the Kafka broker at {servers} failed verification: it \
                 is not signed by a CA in {roots}, or does not name the host connected to"
            ),
        ),
        Diagnosis::NotTls => (
            ErrorKind::Tls,
            format!(
                "the Kafka broker at {servers} did not complete a TLS handshake: the listener \
                 does not speak TLS (security.protocol={protocol}); use the broker's SSL \
                 listener, or a security.protocol without SSL"
            ),
        ),
        Diagnosis::TlsFailed => (
            ErrorKind::Tls,
            format!("the TLS handshake with the Kafka broker at {servers} failed"),
        ),
        Diagnosis::LoginRefused => {
            let who = config
                .properties
                .get("sasl.username")
                .map(|u| format!(" of user '{u}'"))
                .unwrap_or_default();
            (
                ErrorKind::Auth,
                format!(
                    "the Kafka broker at {servers} refused the SASL login{who} (mechanism \
                     {mechanism}): check the user name, the password and the mechanism"
                ),
            )
        }
        Diagnosis::NoSasl => (
            ErrorKind::Config,
            format!(
                "the Kafka broker at {servers} is reachable but its listener does not do SASL \
                 (security.protocol={protocol}, mechanism {mechanism}): drop user:password \
                 from the URL, or connect to the broker's SASL listener"
            ),
        ),
    };
    Error::new(
        kind,
        format!("{message} (librdkafka: {})", reported.reason.trim()),
    )
    .set_temporary(false)
    .with_backend(BACKEND)
    .with_operation(CONNECT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(code: Option<Code>, reason: &str) -> Reported {
        Reported {
            code,
            reason: reason.to_owned(),
        }
    }

    // librdkafka 2.12's words, as the private broker of `tests/tls.rs` made it say them.
    const SCRAM_REFUSED: &str = "[thrd:sasl_plaintext://127.0.0.1:39267/bootstrap]: \
        sasl_plaintext://127.0.0.1:39267/bootstrap: SASL authentication error: Authentication \
        failed during authentication due to invalid credentials with SASL mechanism \
        SCRAM-SHA-256 (after 354ms in state AUTH_REQ)";
    const PLAIN_REFUSED: &str = "sasl_plaintext://127.0.0.1:39267/bootstrap: SASL \
        authentication error: Authentication failed: Invalid username or password (after 318ms \
        in state AUTH_REQ)";
    const VERIFY_FAILED: &str = "ssl://127.0.0.1:35185/bootstrap: SSL handshake failed: \
        error:0A000086:SSL routines::certificate verify failed: broker certificate could not be \
        verified, verify that ssl.ca.location is correctly configured or root CA certificates \
        are installed (install ca-certificates package) (after 68ms in state SSL_HANDSHAKE)";
    const NO_SASL: &str = "sasl_plaintext://127.0.0.1:46617/bootstrap: SASL PLAIN mechanism \
        handshake failed: Broker: Request not valid in current SASL state: broker's supported \
        mechanisms:  (after 0ms in state AUTH_HANDSHAKE)";
    const REFUSED_PORT: &str = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: \
        Connection refused (after 0ms in state CONNECT)";

    fn sasl() -> KafkaConfig {
        KafkaConfig::from_url("kafka://alice:hunter2@h:9092?sasl.mechanism=SCRAM-SHA-256").unwrap()
    }

    #[test]
    fn librdkafkas_reports_are_diagnosed() {
        let plain = KafkaConfig::default();
        for (reason, config, expected) in [
            (SCRAM_REFUSED, sasl(), Some(Diagnosis::LoginRefused)),
            (PLAIN_REFUSED, sasl(), Some(Diagnosis::LoginRefused)),
            (
                VERIFY_FAILED,
                plain.clone(),
                Some(Diagnosis::CertificateRefused),
            ),
            (NO_SASL, sasl(), Some(Diagnosis::NoSasl)),
            // Waiting may cure these: a broker still starting, a port not open yet.
            (REFUSED_PORT, plain.clone(), None),
            (REFUSED_PORT, sasl(), None),
        ] {
            assert_eq!(
                diagnose(&reported(None, reason), &config),
                expected,
                "{reason}"
            );
        }
        // The error callback's code alone says a login was refused.
        assert_eq!(
            diagnose(&reported(Some(Code::Authentication), "x"), &sasl()),
            Some(Diagnosis::LoginRefused)
        );
    }

    #[test]
    fn each_diagnosis_is_a_permanent_typed_error_naming_the_problem_without_the_password() {
        let config = sasl().property("ssl.ca.location", "/etc/ca.pem");
        for (diagnosis, kind, says) in [
            (
                Diagnosis::LoginRefused,
                ErrorKind::Auth,
                "refused the SASL login of user 'alice'",
            ),
            (
                Diagnosis::Untrusted,
                ErrorKind::Tls,
                "is not trusted: no CA in ssl.ca.location /etc/ca.pem",
            ),
            (
                Diagnosis::HostnameMismatch,
                ErrorKind::Tls,
                "hostname mismatch",
            ),
            (
                Diagnosis::CertificateRefused,
                ErrorKind::Tls,
                "failed verification",
            ),
            (Diagnosis::NotTls, ErrorKind::Tls, "does not speak TLS"),
            (
                Diagnosis::NoSasl,
                ErrorKind::Config,
                "its listener does not do SASL",
            ),
        ] {
            let e = error_for(diagnosis, &reported(None, SCRAM_REFUSED), &config);
            assert_eq!(e.kind(), kind, "{e}");
            assert!(!e.is_temporary(), "{e}");
            assert!(e.to_string().contains(says), "{e}");
            assert!(e.to_string().contains("librdkafka: "), "{e}");
            assert!(!e.to_string().contains("hunter2") && !format!("{e:?}").contains("hunter2"));
        }
    }
}
