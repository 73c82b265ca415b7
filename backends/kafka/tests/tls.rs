//! TLS and SASL against a private Apache Kafka (started once for this test binary, stopped when
//! it ends; see `mailroom_testkit::tls`): SSL with the CA, SCRAM-SHA-256/512 and PLAIN over
//! SASL_PLAINTEXT, SCRAM over SASL_SSL; and a typed error naming the problem for a wrong
//! password, an untrusted certificate, a hostname mismatch and credentials sent to a listener
//! without SASL. No password appears in any error, Debug output or log line, librdkafka's debug
//! log included.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mailroom_core::{Error, ErrorKind};
use mailroom_kafka::{KafkaBackend, KafkaConfig};
use mailroom_testkit::tls::{self, assert_no_secret, CapturedLogs, PrivateKafka, TestUser};

const USER: &str = "mailroom-tls-user";
/// Distinctive, so that finding it anywhere in the output is never a coincidence.
const PASSWORD: &str = "pw-Kq7vX2rT9z";
const WRONG_PASSWORD: &str = "pw-wrong-Hx4mN8";
const SECRETS: &[&str] = &[PASSWORD, WRONG_PASSWORD];

/// Long enough for a loaded machine; a diagnosed failure must come well before it.
const CONNECT_TIMEOUT_MS: u64 = 30_000;

fn broker() -> &'static PrivateKafka {
    static BROKER: OnceLock<Result<PrivateKafka, String>> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            let broker = PrivateKafka::start(&[TestUser {
                name: USER.into(),
                password: PASSWORD.into(),
            }]);
            if let Ok(b) = &broker {
                eprintln!("private Kafka started in {:?}", b.started_in);
            }
            broker
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("starting the private Kafka: {e}"))
}

/// Run a test's body under a bound, failing with its name if it does not finish.
async fn bounded<T>(what: &str, body: impl std::future::Future<Output = T>) -> T {
    const LIMIT: Duration = Duration::from_secs(300);
    tokio::time::timeout(LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

fn logs() -> CapturedLogs {
    CapturedLogs::install().expect("no other global tracing subscriber in this test binary")
}

fn url(userinfo: &str, port: u16, params: &str) -> String {
    format!("kafka://{userinfo}127.0.0.1:{port}?connect_timeout_ms={CONNECT_TIMEOUT_MS}&{params}")
}

fn ca(broker: &PrivateKafka) -> String {
    broker.certs.ca.display().to_string()
}

/// librdkafka's debug log for the contexts that see logins and handshakes: what is most likely
/// to show a secret is forwarded to the captured log too.
fn with_debug(url: &str) -> KafkaConfig {
    KafkaConfig::from_url(url)
        .unwrap()
        .property("debug", "security,broker,protocol,conf,generic")
}

/// Connect with `config`, declare a queue, send one message and receive it back.
async fn round_trip(config: KafkaConfig) {
    let backend = KafkaBackend::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tls::round_trip(Arc::new(backend), Duration::from_secs(60)).await;
}

/// Connect with `config`, which must fail; returns the error and how long it took.
async fn refused(config: KafkaConfig) -> (Error, Duration) {
    let start = Instant::now();
    let err = KafkaBackend::connect(config)
        .await
        .expect_err("the connection must be refused");
    (err, start.elapsed())
}

/// The checks every refused connection passes, with this file's secrets and connect timeout.
fn assert_refused(err: &Error, took: Duration, kind: ErrorKind, names: &str) {
    let within = Duration::from_millis(CONNECT_TIMEOUT_MS);
    tls::assert_refused(err, took, kind, names, SECRETS, within);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_with_the_ca_sends_and_receives() {
    let b = broker();
    bounded("ssl round trip", async {
        let config = KafkaConfig::from_url(&url(
            "",
            b.ssl_port,
            &format!("security.protocol=SSL&ssl.ca.location={}", ca(b)),
        ))
        .unwrap();
        round_trip(config).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_and_plain_log_in_with_the_password_from_the_url() {
    let b = broker();
    bounded("sasl round trips", async {
        let userinfo = format!("{USER}:{PASSWORD}@");
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
            let config = KafkaConfig::from_url(&url(
                &userinfo,
                b.sasl_port,
                &format!("sasl.mechanism={mechanism}"),
            ))
            .unwrap();
            round_trip(config).await;
        }
        // SASL over TLS, as production brokers are set up.
        let config = KafkaConfig::from_url(&url(
            &userinfo,
            b.sasl_ssl_port,
            &format!(
                "security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&ssl.ca.location={}",
                ca(b)
            ),
        ))
        .unwrap();
        round_trip(config).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_naming_the_login() {
    let b = broker();
    bounded("wrong password", async {
        for mechanism in ["SCRAM-SHA-256", "PLAIN"] {
            let (err, took) = refused(
                KafkaConfig::from_url(&url(
                    &format!("{USER}:{WRONG_PASSWORD}@"),
                    b.sasl_port,
                    &format!("sasl.mechanism={mechanism}"),
                ))
                .unwrap(),
            )
            .await;
            assert_refused(&err, took, ErrorKind::Auth, "refused the SASL login");
            assert!(err.to_string().contains(USER), "{err}");
            assert!(err.to_string().contains(mechanism), "{err}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_tls_error() {
    let b = broker();
    bounded("untrusted certificate", async {
        let (err, took) = refused(
            KafkaConfig::from_url(&url(
                "",
                b.ssl_port,
                &format!(
                    "security.protocol=SSL&ssl.ca.location={}",
                    b.certs.other_ca.display()
                ),
            ))
            .unwrap(),
        )
        .await;
        assert_refused(&err, took, ErrorKind::Tls, "is not trusted");
        assert!(err.to_string().contains("other-ca.pem"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_mismatch_is_a_tls_error() {
    let b = broker();
    bounded("hostname mismatch", async {
        let (err, took) = refused(
            KafkaConfig::from_url(&url(
                "",
                b.other_host_port,
                &format!("security.protocol=SSL&ssl.ca.location={}", ca(b)),
            ))
            .unwrap(),
        )
        .await;
        assert_refused(&err, took, ErrorKind::Tls, "hostname mismatch");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_for_a_listener_without_sasl_are_a_config_error_not_unreachable() {
    let b = broker();
    bounded("sasl against plaintext", async {
        let (err, took) = refused(
            KafkaConfig::from_url(&url(&format!("{USER}:{PASSWORD}@"), b.plaintext_port, ""))
                .unwrap(),
        )
        .await;
        assert_refused(&err, took, ErrorKind::Config, "does not do SASL");
        assert!(!err.to_string().contains("cannot reach"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_errors_debug_output_or_logs() {
    let logs = logs();
    let b = broker();
    bounded("secret scan", async {
        let userinfo = format!("{USER}:{PASSWORD}@");
        let wrong = format!("{USER}:{WRONG_PASSWORD}@");
        // Succeeding connections, with librdkafka's debug log on.
        let good = with_debug(&url(&userinfo, b.sasl_port, "sasl.mechanism=SCRAM-SHA-256"));
        assert_no_secret("KafkaConfig's Debug", &format!("{good:?}"), SECRETS);
        round_trip(good).await;
        round_trip(with_debug(&url(
            &userinfo,
            b.sasl_ssl_port,
            &format!(
                "security.protocol=SASL_SSL&sasl.mechanism=PLAIN&ssl.ca.location={}",
                ca(b)
            ),
        )))
        .await;
        // Failing ones, each error's Display and Debug scanned.
        for config in [
            with_debug(&url(&wrong, b.sasl_port, "sasl.mechanism=SCRAM-SHA-512")),
            with_debug(&url(&wrong, b.sasl_port, "sasl.mechanism=PLAIN")),
            with_debug(&url(&userinfo, b.plaintext_port, "")),
            with_debug(&url(
                &userinfo,
                b.sasl_ssl_port,
                &format!(
                    "security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-256&ssl.ca.location={}",
                    b.certs.other_ca.display()
                ),
            )),
        ] {
            let (err, _) = refused(config).await;
            assert_no_secret("an error's Display", &err.to_string(), SECRETS);
            assert_no_secret("an error's Debug", &format!("{err:?}"), SECRETS);
        }
        // librdkafka logs from its own threads; give the last lines time to arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = logs.text();
        // The scan only means something if the log was captured: librdkafka's debug lines
        // about the SASL logins are there.
        assert!(
            text.contains("librdkafka") && text.contains("SASL"),
            "librdkafka's log was not captured ({} bytes)",
            text.len()
        );
        assert!(
            text.contains(USER),
            "the user name is logged, the password must not be"
        );
        assert_no_secret("the captured log", &text, SECRETS);
    })
    .await;
}
