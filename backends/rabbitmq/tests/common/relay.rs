//! A TCP relay to the RabbitMQ on 127.0.0.1:5672 that fails connections at a chosen point.
//!
//! It reads the client's side of each connection as AMQP frames (after the 8-byte protocol
//! header: type u8, channel u16, size u32, payload, 0xCE; a method frame's payload starts with
//! class-id u16, method-id u16), so a fault can fire exactly before a given method reaches the
//! broker, or after a given number of bytes. Connections are numbered in the order the relay
//! accepted them, from 1, so a test can let the first connection work, break it, and fail the
//! reconnect at one step.
//!
//! Three ways to fail, each a broker or network the client must survive:
//! - [`Action::Stall`]: nothing more is forwarded either way and both sockets stay open (a
//!   frozen host, a stalled path); only the client's own timers can notice.
//! - [`Action::Swallow`]: that one method (and the content frames that follow it) never reaches
//!   the broker, everything else flows, heartbeats included: a broker that is alive and never
//!   answers.
//! - [`Action::Cut`]: both sockets close (a broker that died or restarted).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The broker every relay forwards to.
pub const BROKER: &str = "127.0.0.1:5672";
/// The same broker, not through a relay.
pub const DIRECT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// An AMQP method, by class and method id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// Class id (e.g. 20 for channel).
    pub class: u16,
    /// Method id within the class.
    pub method: u16,
    /// Its name, for messages.
    pub name: &'static str,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

const fn method(class: u16, method: u16, name: &'static str) -> Method {
    Method {
        class,
        method,
        name,
    }
}

pub const CONNECTION_START_OK: Method = method(10, 11, "connection.start-ok");
pub const CONNECTION_TUNE_OK: Method = method(10, 31, "connection.tune-ok");
pub const CONNECTION_OPEN: Method = method(10, 40, "connection.open");
pub const CHANNEL_OPEN: Method = method(20, 10, "channel.open");
pub const CONFIRM_SELECT: Method = method(85, 10, "confirm.select");
pub const BASIC_QOS: Method = method(60, 10, "basic.qos");
pub const QUEUE_DECLARE: Method = method(50, 10, "queue.declare");
pub const BASIC_CONSUME: Method = method(60, 20, "basic.consume");
pub const BASIC_PUBLISH: Method = method(60, 40, "basic.publish");
pub const BASIC_ACK: Method = method(60, 80, "basic.ack");

/// What a fault does to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward nothing more either way; keep both sockets open until the relay cuts them.
    Stall,
    /// Drop the triggering method and its content frames; keep forwarding the rest.
    Swallow,
    /// Close both sockets.
    Cut,
}

/// Where in the client's stream a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Before the client's next method frame of this kind reaches the broker.
    Method(Method),
    /// Once this many bytes from the client (protocol header included) reached the broker;
    /// a frame crossing the mark is split, so the broker sees half of it.
    Bytes(usize),
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Method(m) => write!(f, "{m}"),
            At::Bytes(n) => write!(f, "byte {n}"),
        }
    }
}

/// The connections a fault applies to, by accept order (the first connection is 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Only this connection.
    Nth(usize),
    /// This connection and every later one.
    From(usize),
}

impl Which {
    fn covers(self, n: usize) -> bool {
        match self {
            Which::Nth(k) => n == k,
            Which::From(k) => n >= k,
        }
    }
}

/// A fault placed on the relay; says how often it fired, so a test can check it was reached.
pub struct Fault {
    which: Which,
    at: At,
    action: Action,
    fired: AtomicUsize,
}

impl Fault {
    /// How many times it fired (a swallowed method can fire again on the same connection).
    pub fn fired(&self) -> usize {
        self.fired.load(Ordering::SeqCst)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {} on {:?}", self.action, self.at, self.which)
    }
}

struct Conn {
    n: usize,
    stalled: AtomicBool,
    /// The client's bytes are no longer read, so its writes back up once the socket buffers
    /// are full; the broker's still reach it.
    blocked: AtomicBool,
    kill: watch::Sender<bool>,
}

impl Conn {
    fn cut(&self) {
        let _ = self.kill.send(true);
    }
}

#[derive(Default)]
struct Inner {
    faults: Mutex<Vec<Arc<Fault>>>,
    conns: Mutex<Vec<Arc<Conn>>>,
    accepted: AtomicUsize,
    events: Mutex<Vec<String>>,
}

impl Inner {
    fn event(&self, text: String) {
        self.events.lock().unwrap().push(text);
    }

    /// The fault that fires for connection `n` on `frame`, given `sent` bytes already forwarded.
    /// A byte fault returns how many bytes of `frame` still go through before it fires.
    fn fault_for(&self, n: usize, frame: &[u8], sent: usize) -> Option<(Arc<Fault>, usize)> {
        let faults = self.faults.lock().unwrap();
        for fault in faults.iter() {
            if !fault.which.covers(n) {
                continue;
            }
            let hit = match fault.at {
                At::Method(m) => method_of(frame) == Some((m.class, m.method)),
                At::Bytes(limit) => sent + frame.len() > limit && sent <= limit,
            };
            if hit {
                fault.fired.fetch_add(1, Ordering::SeqCst);
                let through = match fault.at {
                    At::Method(_) => 0,
                    At::Bytes(limit) => limit - sent,
                };
                return Some((fault.clone(), through));
            }
        }
        None
    }
}

/// (class, method) of a method frame.
fn method_of(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 11 || frame[0] != 1 {
        return None;
    }
    Some((
        u16::from_be_bytes([frame[7], frame[8]]),
        u16::from_be_bytes([frame[9], frame[10]]),
    ))
}

/// Length of the first whole frame in `buf`, if it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 7 {
        return None;
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let len = 7 + size + 1;
    (buf.len() >= len).then_some(len)
}

/// The relay: a listener on 127.0.0.1 and the faults it applies.
pub struct Relay {
    port: u16,
    inner: Arc<Inner>,
}

impl Relay {
    /// Listen on a free port of 127.0.0.1 and forward every connection to [`BROKER`].
    pub async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Inner::default());
        let shared = inner.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = shared.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(broker) = TcpStream::connect(BROKER).await else {
                    shared.event(format!("conn {n}: broker unreachable"));
                    continue;
                };
                let (kill, _) = watch::channel(false);
                let conn = Arc::new(Conn {
                    n,
                    stalled: AtomicBool::new(false),
                    blocked: AtomicBool::new(false),
                    kill,
                });
                shared.conns.lock().unwrap().push(conn.clone());
                let (client_read, client_write) = client.into_split();
                let (broker_read, broker_write) = broker.into_split();
                tokio::spawn(upstream(
                    shared.clone(),
                    conn.clone(),
                    client_read,
                    broker_write,
                ));
                tokio::spawn(downstream(conn, broker_read, client_write));
            }
        });
        Relay { port, inner }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An `amqp://` URL (guest, default vhost) through the relay, with `query` appended.
    pub fn url(&self, query: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?{query}", self.port)
    }

    /// Place a fault; it applies to connections accepted from now on as well as open ones.
    pub fn fault(&self, which: Which, at: At, action: Action) -> Arc<Fault> {
        let fault = Arc::new(Fault {
            which,
            at,
            action,
            fired: AtomicUsize::new(0),
        });
        self.inner.faults.lock().unwrap().push(fault.clone());
        fault
    }

    /// Remove every fault (connections already stalled stay stalled).
    pub fn clear_faults(&self) {
        self.inner.faults.lock().unwrap().clear();
    }

    /// Close every open connection, as a broker restart does.
    pub fn cut_all(&self) {
        for conn in self.inner.conns.lock().unwrap().drain(..) {
            conn.cut();
        }
    }

    /// Close the connections that are stalled or blocked, as the broker does once its
    /// heartbeat notices them (until then it keeps what it delivered on them); returns how many.
    pub fn cut_stalled(&self) -> usize {
        let mut conns = self.inner.conns.lock().unwrap();
        let before = conns.len();
        conns.retain(|conn| {
            let stalled =
                conn.stalled.load(Ordering::SeqCst) || conn.blocked.load(Ordering::SeqCst);
            if stalled {
                conn.cut();
            }
            !stalled
        });
        before - conns.len()
    }

    /// Stop reading what the clients of the open connections send (a broker that stopped
    /// taking a connection's bytes), while what the broker sends still reaches them.
    pub fn block(&self) {
        for conn in self.inner.conns.lock().unwrap().iter() {
            conn.blocked.store(true, Ordering::SeqCst);
        }
        self.inner.event("all connections blocked".into());
    }

    /// Silence every open connection: nothing more is forwarded, the sockets stay open.
    pub fn freeze(&self) {
        for conn in self.inner.conns.lock().unwrap().iter() {
            conn.stalled.store(true, Ordering::SeqCst);
        }
        self.inner.event("all connections frozen".into());
    }

    /// How many connections the relay accepted so far.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// What the relay did, in order (faults fired, connections ended), for failure messages.
    pub fn events(&self) -> String {
        self.inner.events.lock().unwrap().join("; ")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut_all();
    }
}

/// Wait until the connection is cut, holding whatever sockets the caller owns.
async fn until_cut(kill: &mut watch::Receiver<bool>) {
    let _ = kill.wait_for(|cut| *cut).await;
}

/// Client to broker, frame by frame, applying the faults.
async fn upstream(
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
) {
    let mut kill = conn.kill.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    let mut header_done = false;
    // While set, content frames on this channel are dropped with the method they follow.
    let mut swallowing: Option<u16> = None;
    loop {
        loop {
            if conn.stalled.load(Ordering::SeqCst) || conn.blocked.load(Ordering::SeqCst) {
                until_cut(&mut kill).await;
                return;
            }
            let len = if header_done {
                match frame_len(&pending) {
                    Some(len) => len,
                    None => break,
                }
            } else if pending.len() >= 8 {
                8
            } else {
                break;
            };
            let frame: Vec<u8> = pending.drain(..len).collect();
            if header_done {
                let channel = u16::from_be_bytes([frame[1], frame[2]]);
                if let Some(ch) = swallowing {
                    if channel == ch && (frame[0] == 2 || frame[0] == 3) {
                        continue;
                    }
                    swallowing = None;
                }
            }
            let fault = if header_done {
                inner.fault_for(conn.n, &frame, sent)
            } else {
                None
            };
            header_done = true;
            let Some((fault, through)) = fault else {
                if to.write_all(&frame).await.is_err() {
                    conn.cut();
                    return;
                }
                sent += frame.len();
                continue;
            };
            inner.event(format!("conn {}: {fault}", conn.n));
            if through > 0 && to.write_all(&frame[..through]).await.is_err() {
                conn.cut();
                return;
            }
            match fault.action {
                Action::Stall => {
                    conn.stalled.store(true, Ordering::SeqCst);
                    until_cut(&mut kill).await;
                    return;
                }
                Action::Cut => {
                    conn.cut();
                    return;
                }
                Action::Swallow => {
                    swallowing = Some(u16::from_be_bytes([frame[1], frame[2]]));
                }
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    conn.cut();
                    return;
                }
                Ok(n) => n,
            },
            _ = until_cut(&mut kill) => return,
        };
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Broker to client, as it comes, until the connection stalls or is cut.
async fn downstream(conn: Arc<Conn>, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let mut kill = conn.kill.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    conn.cut();
                    return;
                }
                Ok(n) => n,
            },
            _ = until_cut(&mut kill) => return,
        };
        if conn.stalled.load(Ordering::SeqCst) {
            until_cut(&mut kill).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            conn.cut();
            return;
        }
    }
}
