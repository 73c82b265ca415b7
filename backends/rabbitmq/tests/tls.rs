//! amqps against a private RabbitMQ node with TLS listeners (started once for this test
//! binary, stopped when it ends; see `mailroom_testkit::tls`): a round trip with the CA from
//! `?ca_file=`, and a typed error naming the problem for a wrong password, an untrusted
//! certificate, a hostname mismatch and a port that does not speak TLS. No password appears in
//! any error, Debug output or log line.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mailroom_core::{Error, ErrorKind};
use mailroom_rabbitmq::{RabbitBackend, RabbitConfig};
use mailroom_testkit::tls::{self, assert_no_secret, CapturedLogs, PrivateRabbitMq, TestUser};

const USER: &str = "mailroom-tls-user";
/// Distinctive, so that finding it anywhere in the output is never a coincidence.
const PASSWORD: &str = "pw-Rb5tW3qL8y";
const WRONG_PASSWORD: &str = "pw-wrong-Gz6pV1";
const SECRETS: &[&str] = &[PASSWORD, WRONG_PASSWORD];

/// Long enough for a loaded machine; a refused handshake answers well before it.
const CONNECT_TIMEOUT_MS: u64 = 30_000;

fn broker() -> &'static PrivateRabbitMq {
    static BROKER: OnceLock<Result<PrivateRabbitMq, String>> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            let broker = PrivateRabbitMq::start(&TestUser {
                name: USER.into(),
                password: PASSWORD.into(),
            });
            if let Ok(b) = &broker {
                eprintln!("private RabbitMQ started in {:?}", b.started_in);
            }
            broker
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("starting the private RabbitMQ: {e}"))
}

/// Run a test's body under a bound, failing with its name if it does not finish.
async fn bounded<T>(what: &str, body: impl std::future::Future<Output = T>) -> T {
    const LIMIT: Duration = Duration::from_secs(120);
    tokio::time::timeout(LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

fn url(scheme: &str, password: &str, host: &str, port: u16, params: &str) -> String {
    format!(
        "{scheme}://{USER}:{password}@{host}:{port}/?connect_timeout_ms={CONNECT_TIMEOUT_MS}&reconnect_timeout_ms={CONNECT_TIMEOUT_MS}{params}"
    )
}

fn ca_param(path: &std::path::Path) -> String {
    format!("&ca_file={}", path.display())
}

/// Connect to `url`, declare a queue, send one message and receive it back.
async fn round_trip(url: &str) {
    let backend = RabbitBackend::from_url(url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tls::round_trip(Arc::new(backend), Duration::from_secs(30)).await;
}

async fn refused(url: &str) -> (Error, Duration) {
    let start = Instant::now();
    let err = RabbitBackend::from_url(url)
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
async fn amqps_with_the_ca_file_sends_and_receives() {
    let b = broker();
    bounded("amqps round trip", async {
        let url = url(
            "amqps",
            PASSWORD,
            "127.0.0.1",
            b.tls_port,
            &ca_param(&b.certs.ca),
        );
        assert_eq!(RabbitConfig::from_url(&url).unwrap().port, b.tls_port);
        round_trip(&url).await;
        // `localhost` is in the certificate too.
        round_trip(&url.replace("127.0.0.1", "localhost")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_naming_the_user() {
    let b = broker();
    bounded("wrong password", async {
        let (err, took) = refused(&url(
            "amqps",
            WRONG_PASSWORD,
            "127.0.0.1",
            b.tls_port,
            &ca_param(&b.certs.ca),
        ))
        .await;
        assert_refused(&err, took, ErrorKind::Auth, "refused the login");
        assert!(err.to_string().contains(USER), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_tls_error() {
    let b = broker();
    bounded("untrusted certificate", async {
        // A CA file that did not sign the broker's certificate ...
        let (err, took) = refused(&url(
            "amqps",
            PASSWORD,
            "127.0.0.1",
            b.tls_port,
            &ca_param(&b.certs.other_ca),
        ))
        .await;
        assert_refused(&err, took, ErrorKind::Tls, "is not trusted");
        assert!(err.to_string().contains("other-ca.pem"), "{err}");
        // ... and none: the system's roots do not know the test CA.
        let (err, took) = refused(&url("amqps", PASSWORD, "127.0.0.1", b.tls_port, "")).await;
        assert_refused(&err, took, ErrorKind::Tls, "is not trusted");
        assert!(err.to_string().contains("no ca_file"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_mismatch_is_a_tls_error() {
    let b = broker();
    bounded("hostname mismatch", async {
        // The same listener on 127.0.0.2, which the certificate does not name.
        let (err, took) = refused(&url(
            "amqps",
            PASSWORD,
            "127.0.0.2",
            b.tls_port,
            &ca_param(&b.certs.ca),
        ))
        .await;
        assert_refused(&err, took, ErrorKind::Tls, "hostname mismatch");
        assert!(err.to_string().contains("127.0.0.2"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_to_a_plain_port_is_a_tls_error_naming_the_port() {
    let b = broker();
    bounded("amqps to a plain port", async {
        let (err, took) = refused(&url(
            "amqps",
            PASSWORD,
            "127.0.0.1",
            b.plain_port,
            &ca_param(&b.certs.ca),
        ))
        .await;
        assert_refused(&err, took, ErrorKind::Tls, "not a TLS listener");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_errors_debug_output_or_logs() {
    let logs = CapturedLogs::install().expect("no other global tracing subscriber here");
    let b = broker();
    bounded("secret scan", async {
        let good = url(
            "amqps",
            PASSWORD,
            "127.0.0.1",
            b.tls_port,
            &ca_param(&b.certs.ca),
        );
        let config = RabbitConfig::from_url(&good).unwrap();
        assert_no_secret("RabbitConfig's Debug", &format!("{config:?}"), SECRETS);
        assert_no_secret("the display target", &config.display_target(), SECRETS);
        round_trip(&good).await;
        round_trip(&url("amqp", PASSWORD, "127.0.0.1", b.plain_port, "")).await;
        for bad in [
            url(
                "amqps",
                WRONG_PASSWORD,
                "127.0.0.1",
                b.tls_port,
                &ca_param(&b.certs.ca),
            ),
            url("amqp", WRONG_PASSWORD, "127.0.0.1", b.plain_port, ""),
            url(
                "amqps",
                PASSWORD,
                "127.0.0.1",
                b.tls_port,
                &ca_param(&b.certs.other_ca),
            ),
            url(
                "amqps",
                PASSWORD,
                "127.0.0.2",
                b.tls_port,
                &ca_param(&b.certs.ca),
            ),
        ] {
            let (err, _) = refused(&bad).await;
            assert_no_secret("an error's Display", &err.to_string(), SECRETS);
            assert_no_secret("an error's Debug", &format!("{err:?}"), SECRETS);
        }
        let text = logs.text();
        // The scan only means something if the connections' log was captured.
        assert!(
            text.lines().count() > 10,
            "the connections' log was not captured ({} bytes)",
            text.len()
        );
        assert_no_secret("the captured log", &text, SECRETS);
    })
    .await;
}
