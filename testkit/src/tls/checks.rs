//! The two checks every backend's `tls` tests make: a connection that is let in carries a message
//! both ways, and one that is refused is refused clearly, permanently, quickly and without a
//! secret in what the user reads.

use std::sync::Arc;
use std::time::Duration;

use mailroom_core::{Backend, ConsumerOptions, Destination, Error, ErrorKind, Message, QueueSpec};

use super::assert_no_secret;

/// Declare a fresh queue on `backend`, send one message, receive it back within `within`, ack
/// it, delete the queue and close the backend.
pub async fn round_trip(backend: Arc<dyn Backend>, within: Duration) {
    let queue = format!(
        "mr-tls-q-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let topology = backend.topology();
    topology
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap_or_else(|e| panic!("declare over tls: {e}"));
    backend
        .producer()
        .await
        .unwrap_or_else(|e| panic!("producer over tls: {e}"))
        .send(&Destination::queue(&queue), Message::new("over tls"))
        .await
        .unwrap_or_else(|e| panic!("send over tls: {e}"));
    let mut consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("consumer over tls: {e}"));
    let delivery = consumer
        .receive_timeout(within)
        .await
        .unwrap_or_else(|e| panic!("receive over tls: {e}"))
        .unwrap_or_else(|| panic!("the message sent comes back within {within:?}"));
    assert_eq!(delivery.message().payload().as_ref(), b"over tls");
    delivery.ack().await.unwrap();
    topology.delete_queue(&queue).await.unwrap();
    backend.close().await.unwrap();
}

/// What a refused connection must show: the error `kind`, a message naming the problem
/// (`names`), not temporary (retrying cannot help), none of `secrets` in its Display or Debug,
/// and an answer within `within` (the failure was diagnosed, not waited out).
pub fn assert_refused(
    err: &Error,
    took: Duration,
    kind: ErrorKind,
    names: &str,
    secrets: &[&str],
    within: Duration,
) {
    // Shown with --nocapture: what a user reads, and how long it took.
    eprintln!("refused after {took:?}: {err}");
    assert_eq!(err.kind(), kind, "{err}");
    assert!(err.to_string().contains(names), "{err}");
    assert!(!err.is_temporary(), "{err}");
    assert_no_secret("the error's Display", &err.to_string(), secrets);
    assert_no_secret("the error's Debug", &format!("{err:?}"), secrets);
    assert!(took < within, "diagnosed only after {took:?}: {err}");
}
