//! A TCP relay on 127.0.0.1:9095 (what the broker's `FAULTS` listener advertises) to that
//! listener on 127.0.0.1:9094, so every connection librdkafka makes through
//! `kafka://127.0.0.1:9095` (bootstrap, then the broker from metadata) passes through it.
//!
//! Three states: [`Relay::pass`] forwards both ways; [`Relay::freeze`] forwards nothing and
//! keeps every socket open (a frozen host or a stalled path; held bytes go on after `pass`);
//! [`Relay::cut`] closes every socket and closes new connections at once until `pass`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the relay listens: the address the FAULTS listener advertises.
pub const LISTEN: &str = "127.0.0.1:9095";
/// The broker's FAULTS listener it forwards to.
pub const UPSTREAM: &str = "127.0.0.1:9094";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Freeze,
    Cut,
}

/// The mode, and how many cuts happened (a connection accepted before a cut never resumes).
#[derive(Clone, Copy, Debug)]
struct State {
    mode: Mode,
    cuts: u64,
}

/// The relay; dropping it closes every connection and the listener.
pub struct Relay {
    state: watch::Sender<State>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listen on [`LISTEN`], passing everything through.
    pub async fn start() -> Relay {
        let listener = TcpListener::bind(LISTEN).await.unwrap_or_else(|e| {
            panic!("cannot bind the relay on {LISTEN} (is another test using it?): {e}")
        });
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            cuts: 0,
        });
        let rx = state.subscribe();
        let accept = tokio::spawn(accept_loop(listener, rx));
        Relay { state, accept }
    }

    /// Forward both ways again (after a freeze, the held bytes go on).
    pub fn pass(&self) {
        self.state.send_modify(|s| s.mode = Mode::Pass);
    }

    /// Forward nothing either way; keep every socket (and new ones) open.
    pub fn freeze(&self) {
        self.state.send_modify(|s| s.mode = Mode::Freeze);
    }

    /// Close every socket both ways; close new connections at once until [`Relay::pass`].
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::Cut;
            s.cuts += 1;
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, rx: watch::Receiver<State>) {
    while let Ok((client, _)) = listener.accept().await {
        let now = *rx.borrow();
        if now.mode == Mode::Cut {
            drop(client);
            continue;
        }
        let rx = rx.clone();
        tokio::spawn(async move {
            let connect = TcpStream::connect(UPSTREAM);
            let Ok(Ok(server)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, rx.clone(), now.cuts));
            tokio::spawn(pump(server_read, client_write, rx, now.cuts));
        });
    }
}

fn is_cut(s: &State, born: u64) -> bool {
    s.mode == Mode::Cut || s.cuts != born
}

/// Copy `from` to `to` while passing; hold while frozen; return (closing both) on a cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rx: watch::Receiver<State>,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut cut = rx.clone();
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.wait_for(|s| is_cut(s, born)) => return,
        };
        // Hold the chunk while frozen.
        let go = rx
            .wait_for(|s| is_cut(s, born) || s.mode == Mode::Pass)
            .await
            .map(|s| !is_cut(&s, born))
            .unwrap_or(false);
        if !go {
            return;
        }
        let mut cut = rx.clone();
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            _ = cut.wait_for(|s| is_cut(s, born)) => return,
        }
    }
}
