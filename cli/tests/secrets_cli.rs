//! No secret, header value or payload in anything the `mailroom` binary prints, found as a user
//! would: the success line and the failure lines of `produce` with credentials in the URL, a
//! password holding an unencoded `/` or `?`, a wrong password, a query parameter holding a
//! secret, and a publish RabbitMQ returns (its warning). Runs the built binary against the
//! brokers `scripts/brokers.sh up` starts, at the default log filter and at `trace`, and scans
//! stdout and stderr.

use std::process::{Command, Output};

/// Longest any one run may take: a hang fails its test instead of the suite.
const RUN_LIMIT_SECS: &str = "120";
const HEADER_VALUE: &str = "hdr-value-91c2d7";
const PAYLOAD: &str = "payload-text-5be0f4";

/// The binary under `timeout`, at the log filter `log` (`None`: the default, `warn`).
fn mailroom(log: Option<&str>) -> Command {
    let mut command = Command::new("timeout");
    command.args([
        "--kill-after=10",
        RUN_LIMIT_SECS,
        env!("CARGO_BIN_EXE_mailroom"),
    ]);
    command.env_remove("RUST_LOG").env_remove("MAILROOM_LOG");
    if let Some(filter) = log {
        command.env("MAILROOM_LOG", filter);
    }
    command
}

/// `mailroom produce --url URL --to TO` of one message carrying the header and payload to look
/// for, at each log filter; every output is checked for each of `secrets` and for the header
/// value and payload.
fn produce_everywhere(url: &str, to: &str, declare: bool, secrets: &[&str]) -> Vec<Output> {
    let mut outputs = Vec::new();
    for log in [None, Some("trace")] {
        let mut command = mailroom(log);
        command.args(["produce", "--url", url, "--to", to, "--message", PAYLOAD]);
        command.args(["--header", &format!("x-secret-header={HEADER_VALUE}")]);
        if declare {
            command.arg("--declare");
        }
        let out = command.output().expect("mailroom runs");
        let printed = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in secrets.iter().chain(&[HEADER_VALUE, PAYLOAD]) {
            assert!(
                !printed.contains(secret),
                "{secret:?} printed (log {log:?}, exit {:?}):\n{printed}",
                out.status.code()
            );
        }
        outputs.push(out);
    }
    outputs
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fresh(what: &str) -> String {
    format!(
        "mr-secrets-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[cfg(feature = "sqs")]
#[test]
fn sqs_keys_are_never_printed() {
    let queue = fresh("sqs");
    // A secret as AWS makes them, '/' and '+' included, percent-encoded: it connects.
    for out in produce_everywhere(
        "sqs://KEYIDSECRETSCAN:wJalr%2FK7MDENGbPx+RfiCY@127.0.0.1:4566?region=us-east-1",
        &queue,
        true,
        &["wJalr", "K7MDENG", "RfiCY"],
    ) {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("1 message(s) confirmed by sqs://KEYIDSECRETSCAN:***@"));
    }
    // Unencoded, the '/' cannot be told from a path: refused, naming the fix, not the secret.
    for out in produce_everywhere(
        "sqs://KEYIDSECRETSCAN:wJalr/K7MDENGbPx+RfiCY@127.0.0.1:4566?region=us-east-1",
        &queue,
        false,
        &["wJalr", "K7MDENG", "RfiCY"],
    ) {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("%2F"), "{}", stderr(&out));
    }
}

#[cfg(feature = "rabbitmq")]
#[test]
fn rabbitmq_passwords_are_never_printed() {
    let queue = fresh("amqp");
    for out in produce_everywhere(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        &queue,
        true,
        &["guest:guest"],
    ) {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("confirmed by amqp://guest:***@127.0.0.1:5672/%2f"));
    }
    for (url, exit) in [
        ("amqp://guest:wrong-pass-8d1e@127.0.0.1:5672/%2f", 1),
        ("amqp://guest:wrong/pass-8d1e@127.0.0.1:5672/%2f", 2),
        ("amqp://guest:wrong?pass-8d1e@127.0.0.1:5672", 2),
    ] {
        for out in produce_everywhere(url, &queue, false, &["pass-8d1e", "guest:wrong"]) {
            assert_eq!(out.status.code(), Some(exit), "{url}: {}", stderr(&out));
        }
    }
}

#[cfg(feature = "rabbitmq")]
#[test]
fn a_returned_publish_is_logged_without_its_headers_or_payload() {
    let routing_key = fresh("nowhere");
    let missing = fresh("missing");
    for (to, routing_key) in [
        (format!("amq.direct:{routing_key}"), routing_key.as_str()),
        (missing.clone(), missing.as_str()),
    ] {
        for out in produce_everywhere("amqp://guest:guest@127.0.0.1:5672/%2f", &to, false, &[]) {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{err}");
            // The warning says which message, where, how big and why.
            assert!(err.contains("the broker returned a message"), "{err}");
            assert!(
                err.contains(routing_key) && err.contains("reply_code=312"),
                "{err}"
            );
            assert!(err.contains(&format!("size={}", PAYLOAD.len())), "{err}");
        }
    }
}

#[cfg(feature = "kafka")]
#[test]
fn secret_query_parameters_are_never_printed() {
    let topic = fresh("kafka");
    // A client property that holds a secret, on a plaintext broker that ignores it.
    for out in produce_everywhere(
        "kafka://127.0.0.1:9092?sasl.password=key-pass-3e9a",
        &topic,
        true,
        &["key-pass-3e9a"],
    ) {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("sasl.password=***"),
            "{}",
            stdout(&out)
        );
    }
}
