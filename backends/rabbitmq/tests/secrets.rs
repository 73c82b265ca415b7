//! No header value or payload of a message reaches the logs: a publish the broker returns
//! (unroutable, or to a missing queue) is logged by what identifies it, and lapin's own dump of
//! the returned message is kept out. The logs are captured by the process's global subscriber,
//! as an application's would be (lapin logs from its own I/O thread).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_core::{Backend, Destination, ErrorKind, Message};
use mailroom_rabbitmq::RabbitBackend;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const HEADER_VALUE: &str = "hdr-value-7f3a91";
const PAYLOAD: &str = "payload-text-c04e2b";

/// Every log line of the process, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_message_is_logged_by_what_identifies_it_never_its_contents() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let backend = tokio::time::timeout(Duration::from_secs(30), RabbitBackend::from_url(URL))
        .await
        .expect("connect waited more than 30 s")
        .unwrap();
    let producer = backend.producer().await.unwrap();
    let missing = format!("mr-secrets-missing-{}", uuid::Uuid::new_v4().simple());
    let routing_key = format!("mr-secrets-nowhere-{}", uuid::Uuid::new_v4().simple());
    for (dest, kind) in [
        (Destination::queue(&missing), ErrorKind::NotFound),
        (
            Destination::exchange("amq.direct", &routing_key),
            ErrorKind::Unroutable,
        ),
    ] {
        let message = Message::builder(PAYLOAD)
            .header("x-secret-header", HEADER_VALUE)
            .build()
            .unwrap();
        let id = message.id().to_string();
        let err = tokio::time::timeout(Duration::from_secs(30), producer.send(&dest, message))
            .await
            .expect("send waited more than 30 s")
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(HEADER_VALUE) && !shown.contains(PAYLOAD),
            "{shown}"
        );
        // The warning names the message: give it a moment to reach the writer.
        let mut logs = captured.text();
        for _ in 0..50 {
            if logs.contains(&id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            logs = captured.text();
        }
        assert!(
            logs.contains(&id),
            "no log line names message {id}:\n{logs}"
        );
    }
    producer.close().await.unwrap();
    backend.close().await.unwrap();

    let logs = captured.text();
    println!("{logs}");
    assert!(
        logs.contains(&missing) && logs.contains(&routing_key),
        "{logs}"
    );
    assert!(logs.contains("reply_code=312"), "{logs}");
    assert!(!logs.contains("Server returned us a message"), "{logs}");
    for secret in [HEADER_VALUE, PAYLOAD] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
    // The payload's bytes as lapin's Debug prints them ([112, 97, ...]).
    let bytes = format!("{:?}", PAYLOAD.as_bytes());
    let bytes = bytes.trim_start_matches('[').trim_end_matches(']');
    assert!(!logs.contains(bytes), "payload bytes in the logs:\n{logs}");
}
