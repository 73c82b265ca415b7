//! A loopback TCP relay a test puts between the code under test and a broker, to break the
//! network on command.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use mailroom_testkit::relay::Relay;
//!
//! let relay = Relay::start("127.0.0.1:5672").await?;
//! let url = format!("amqp://guest:guest@{}/%2f", relay.addr());
//! // ... connect to `url`, send and receive ...
//! relay.stall(); // a frozen path: nothing forwarded, sockets open
//! relay.heal(); // the held bytes go on
//! relay.slow(Duration::from_millis(200), Some(64 * 1024)); // latency and a bandwidth cap
//! relay.cut(); // close everything, refuse new connections
//! relay.heal();
//! # Ok(()) }
//! ```
//!
//! The relay-wide faults, each until [`Relay::heal`]:
//! - [`Relay::cut`]: every open connection closes both ways at once, and new connections are
//!   accepted and closed at once (a dead host, a severed link).
//! - [`Relay::stall`]: nothing is forwarded either way and every socket stays open, new ones
//!   too (a frozen host, a stalled path); the held bytes go on after [`Relay::heal`].
//! - [`Relay::slow`]: every chunk is delayed by a latency and paced to a bandwidth cap.
//!
//! Per connection ([`Relay::connections`], in accept order from 1): [`Connection::stall`] (for
//! good, until cut), [`Connection::block_client`] and [`Connection::cut`]. And per byte: a
//! [`Hook`] sees each direction of each connection before it is forwarded and can forward,
//! discard, stall or cut at a point it finds in the protocol (an AMQP method frame, an HTTP
//! answer's head), so the protocol knowledge stays with the test that needs it.

mod conn;
mod hook;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use conn::Connection;
pub use hook::{Direction, Hook, Step, StreamHook};

use conn::{Connections, Pump};

/// How long the relay tries to reach the upstream for a new connection before closing it.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(5);

/// The relay-wide state every pump follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Pass,
    Stall,
    Cut,
    Slow {
        latency: Duration,
        bytes_per_sec: Option<u64>,
    },
}

/// What the relay did, in order, for failure messages.
#[derive(Clone, Default)]
pub(crate) struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    pub(crate) fn push(&self, event: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    fn joined(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).join("; ")
    }
}

/// The relay: a listener on the loopback that forwards every connection to one upstream
/// address. Dropping it closes the listener and every connection.
pub struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    conns: Connections,
    accepted: Arc<AtomicUsize>,
    events: Events,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listen on a free port of 127.0.0.1 and forward every connection to `upstream`.
    pub async fn start(upstream: &str) -> io::Result<Relay> {
        Relay::builder(upstream).start().await
    }

    /// A relay to `upstream`, to configure before it starts.
    pub fn builder(upstream: &str) -> RelayBuilder {
        RelayBuilder {
            upstream: upstream.to_owned(),
            listen: "127.0.0.1:0".to_owned(),
            hook: None,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Forward both ways, at full speed, to open and new connections alike (the bytes a stall
    /// held go on). Connections stalled one by one stay stalled.
    pub fn heal(&self) {
        self.set(Mode::Pass, "healed");
    }

    /// Close every open connection both ways now, and close new ones as soon as they are
    /// accepted, until [`Relay::heal`].
    pub fn cut(&self) {
        self.set(Mode::Cut, "cut");
        self.close_connections();
    }

    /// Forward nothing either way and keep every socket open, new ones included, until
    /// [`Relay::heal`].
    pub fn stall(&self) {
        self.set(Mode::Stall, "stalled");
    }

    /// Delay every chunk by `latency` and, with a cap, pace each direction of each connection
    /// to `bytes_per_sec`, until [`Relay::heal`].
    pub fn slow(&self, latency: Duration, bytes_per_sec: Option<u64>) {
        self.set(
            Mode::Slow {
                latency,
                bytes_per_sec,
            },
            "slowed",
        );
    }

    /// Close every open connection now, as a broker restart does; new ones are still
    /// forwarded.
    pub fn close_connections(&self) {
        for conn in self.conns.open() {
            conn.cut();
        }
    }

    /// The connections open now, in accept order.
    pub fn connections(&self) -> Vec<Connection> {
        self.conns.open()
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// What it did so far, in order (faults, connections cut or refused), for failure messages.
    pub fn events(&self) -> String {
        self.events.joined()
    }

    fn set(&self, mode: Mode, what: &str) {
        self.mode.send_replace(mode);
        self.events.push(format!("relay {what}"));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.mode.send_replace(Mode::Cut);
        self.close_connections();
    }
}

/// A [`Relay`] not yet listening.
pub struct RelayBuilder {
    upstream: String,
    listen: String,
    hook: Option<Arc<dyn Hook>>,
}

impl RelayBuilder {
    /// Listen on this address instead of a free port of 127.0.0.1 (for a broker that
    /// advertises a fixed address back to its clients).
    pub fn listen(mut self, addr: &str) -> RelayBuilder {
        addr.clone_into(&mut self.listen);
        self
    }

    /// Let `hook` decide about every byte before it is forwarded.
    pub fn hook(mut self, hook: impl Hook) -> RelayBuilder {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Bind and start forwarding.
    pub async fn start(self) -> io::Result<Relay> {
        let listener = TcpListener::bind(&self.listen).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let relay_mode = mode.subscribe();
        let conns = Connections::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let events = Events::default();
        let accept = tokio::spawn(accept_loop(Acceptor {
            listener,
            upstream: self.upstream,
            hook: self.hook,
            mode: relay_mode,
            conns: conns.clone(),
            accepted: accepted.clone(),
            events: events.clone(),
        }));
        Ok(Relay {
            addr,
            mode,
            conns,
            accepted,
            events,
            accept,
        })
    }
}

struct Acceptor {
    listener: TcpListener,
    upstream: String,
    hook: Option<Arc<dyn Hook>>,
    mode: watch::Receiver<Mode>,
    conns: Connections,
    accepted: Arc<AtomicUsize>,
    events: Events,
}

async fn accept_loop(a: Acceptor) {
    while let Ok((client, _)) = a.listener.accept().await {
        let n = a.accepted.fetch_add(1, Ordering::SeqCst) + 1;
        if *a.mode.borrow() == Mode::Cut {
            a.events.push(format!("conn {n}: refused (cut)"));
            drop(client);
            continue;
        }
        let conn = Connection::new(n, a.events.clone());
        // Registered before the upstream connect, so a cut meanwhile closes it too.
        a.conns.add(conn.clone());
        let upstream = a.upstream.clone();
        let hook = a.hook.clone();
        let mode = a.mode.clone();
        let events = a.events.clone();
        tokio::spawn(async move {
            let connect = tokio::time::timeout(UPSTREAM_CONNECT, TcpStream::connect(&upstream));
            let Ok(Ok(server)) = connect.await else {
                events.push(format!("conn {n}: upstream {upstream} unreachable"));
                conn.cut();
                return;
            };
            if conn.is_closed() {
                return;
            }
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let pump = |direction| Pump {
                conn: conn.clone(),
                direction,
                mode: mode.clone(),
                hook: hook.as_ref().and_then(|h| h.open(n, direction)),
            };
            tokio::spawn(pump(Direction::ToUpstream).run(client_read, server_write));
            tokio::spawn(pump(Direction::ToClient).run(server_read, client_write));
        });
    }
}
