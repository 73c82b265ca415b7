//! The relay against a local echo server: each fault does what it says, and heals.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Direction, Hook, Relay, Step, StreamHook};

/// An echo server on a free port; returns its address.
async fn echo() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Send `text` and read as many bytes back, within `bound`; `None` if they did not come.
async fn round_trip(s: &mut TcpStream, text: &[u8], bound: Duration) -> Option<Vec<u8>> {
    s.write_all(text).await.ok()?;
    let mut back = vec![0u8; text.len()];
    match tokio::time::timeout(bound, s.read_exact(&mut back)).await {
        Ok(Ok(_)) => Some(back),
        _ => None,
    }
}

const BOUND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn passes_then_stalls_without_closing_then_delivers_what_it_held_after_the_heal() {
    let relay = Relay::start(&echo().await).await.unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(
        round_trip(&mut s, b"one", BOUND).await.as_deref(),
        Some(&b"one"[..])
    );
    relay.stall();
    assert_eq!(
        round_trip(&mut s, b"two", Duration::from_millis(300)).await,
        None
    );
    relay.heal();
    let mut back = [0u8; 3];
    tokio::time::timeout(BOUND, s.read_exact(&mut back))
        .await
        .expect("the held bytes arrive after the heal")
        .unwrap();
    assert_eq!(&back, b"two");
}

#[tokio::test]
async fn a_cut_closes_open_connections_and_refuses_new_ones_until_the_heal() {
    let relay = Relay::start(&echo().await).await.unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    assert!(round_trip(&mut s, b"x", BOUND).await.is_some());
    relay.cut();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the open connection is closed"
    );
    let mut new = TcpStream::connect(relay.addr()).await.unwrap();
    let read = tokio::time::timeout(BOUND, new.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a new connection is closed at once"
    );
    relay.heal();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    assert!(round_trip(&mut s, b"y", BOUND).await.is_some());
    assert_eq!(relay.accepted(), 3);
}

#[tokio::test]
async fn slow_adds_its_latency_each_way() {
    let relay = Relay::start(&echo().await).await.unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    relay.slow(Duration::from_millis(150), None);
    let started = Instant::now();
    assert!(round_trip(&mut s, b"z", BOUND).await.is_some());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "150 ms each way: {:?}",
        started.elapsed()
    );
}

/// Lets `limit` bytes of the client's stream through, then cuts.
struct CutAfter(usize);

impl Hook for CutAfter {
    fn open(&self, _connection: usize, direction: Direction) -> Option<Box<dyn StreamHook>> {
        struct Left(usize);
        impl StreamHook for Left {
            fn step(&mut self, held: &[u8]) -> Step {
                if held.len() < self.0 {
                    self.0 -= held.len();
                    Step::Forward(held.len())
                } else {
                    Step::Cut(std::mem::take(&mut self.0))
                }
            }
        }
        (direction == Direction::ToUpstream).then(|| Box::new(Left(self.0)) as Box<dyn StreamHook>)
    }
}

#[tokio::test]
async fn a_hook_cuts_the_connection_after_the_bytes_it_let_through() {
    // A server that reports everything it received once the connection ends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        let _ = tx.send(got);
    });
    let relay = Relay::builder(&upstream)
        .hook(CutAfter(4))
        .start()
        .await
        .unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    s.write_all(b"abcdef").await.unwrap();
    let got = tokio::time::timeout(BOUND, rx).await.unwrap().unwrap();
    assert_eq!(got, b"abcd", "the first 4 bytes went through, then the cut");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the client's side is closed too"
    );
}
