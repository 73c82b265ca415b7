//! A broker that stops answering without hanging up (a frozen host, a stalled network path)
//! must not hold `close` forever: every close returns within the connect timeout, and what
//! was not acked stays with the broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::{Backend, Destination, Message, QueueSpec};
use mailroom_rabbitmq::RabbitBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to the RabbitMQ on 127.0.0.1:5672 that can go silent: once frozen, it keeps
/// both sockets open and forwards nothing more in either direction, until it is cut.
struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
    cut: watch::Sender<bool>,
}

async fn relay() -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    let (cut, cut_rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect("127.0.0.1:5672").await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let ends = (flag.clone(), cut_rx.clone());
            tokio::spawn(pump(client_read, server_write, ends.clone()));
            tokio::spawn(pump(server_read, client_write, ends));
        }
    });
    Relay { port, frozen, cut }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    (frozen, mut cut): (Arc<AtomicBool>, watch::Receiver<bool>),
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.wait_for(|cut| *cut) => return,
        };
        if frozen.load(Ordering::SeqCst) {
            // Swallow it, and hold both sockets open until cut: silence, not a hang-up.
            let _ = cut.wait_for(|cut| *cut).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_returns_within_the_connect_timeout_when_the_broker_goes_silent() {
    let relay = relay().await;
    // No heartbeat, so only the close handshake can notice the silence.
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?connect_timeout_ms=1000&heartbeat_secs=0",
        relay.port
    );
    let backend = RabbitBackend::from_url(&url).await.unwrap();
    let queue = format!(
        "mr-silent-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await
        .unwrap();
    let producer = backend.producer().await.unwrap();
    producer
        .send(&Destination::queue(&queue), Message::new("kept"))
        .await
        .unwrap();
    let mut consumer = backend.consumer(&queue, Default::default()).await.unwrap();
    let delivery = consumer.receive().await.unwrap();
    assert_eq!(delivery.message().payload().as_ref(), b"kept");

    relay.frozen.store(true, Ordering::SeqCst);
    // Generous outer bound: without the fix these never return at all.
    let bound = Duration::from_secs(15);
    let started = Instant::now();
    let _ = tokio::time::timeout(bound, consumer.close())
        .await
        .expect("consumer close returns");
    let _ = tokio::time::timeout(bound, producer.close())
        .await
        .expect("producer close returns");
    let _ = tokio::time::timeout(bound, backend.close())
        .await
        .expect("backend close returns");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "three closes, each bounded by the 1 s connect timeout: {:?}",
        started.elapsed()
    );
    drop(delivery);

    // The unacked message is still the broker's: once the silent connection is gone (cut
    // here; a heartbeat or TCP timeout in life), a fresh connection gets it.
    let _ = relay.cut.send(true);
    let direct = RabbitBackend::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")
        .await
        .unwrap();
    let mut again = direct.consumer(&queue, Default::default()).await.unwrap();
    let redelivered = tokio::time::timeout(Duration::from_secs(30), again.receive())
        .await
        .expect("the unacked message comes back once the silent connection is gone")
        .unwrap();
    assert_eq!(redelivered.message().payload().as_ref(), b"kept");
    redelivered.ack().await.unwrap();
    direct.topology().delete_queue(&queue).await.unwrap();
    direct.close().await.unwrap();
}
