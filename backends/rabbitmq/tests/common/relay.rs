//! The testkit's relay to the RabbitMQ on 127.0.0.1:5672, with an AMQP hook that fails
//! connections at a chosen point.
//!
//! The hook reads the client's side of each connection as AMQP frames (after the 8-byte protocol
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mailroom_testkit::relay::{self as testkit_relay, Direction, Hook, Step, StreamHook};

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

#[derive(Default)]
struct Faults {
    faults: Mutex<Vec<Arc<Fault>>>,
    events: Mutex<Vec<String>>,
}

impl Faults {
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

/// The AMQP hook: applies the faults to the client's stream, frame by frame.
struct AmqpHook(Arc<Faults>);

impl Hook for AmqpHook {
    fn open(&self, connection: usize, direction: Direction) -> Option<Box<dyn StreamHook>> {
        (direction == Direction::ToUpstream).then(|| {
            Box::new(AmqpStream {
                faults: self.0.clone(),
                n: connection,
                header_done: false,
                sent: 0,
                swallowing: None,
                then_discard: 0,
            }) as Box<dyn StreamHook>
        })
    }
}

/// One client stream: where it is in the framing.
struct AmqpStream {
    faults: Arc<Faults>,
    n: usize,
    header_done: bool,
    /// Bytes forwarded so far (protocol header included).
    sent: usize,
    /// While set, content frames on this channel are dropped with the method they follow.
    swallowing: Option<u16>,
    /// The rest of a frame a byte fault swallowed after letting its head through.
    then_discard: usize,
}

impl StreamHook for AmqpStream {
    fn step(&mut self, held: &[u8]) -> Step {
        if self.then_discard > 0 {
            return Step::Discard(std::mem::take(&mut self.then_discard));
        }
        if !self.header_done {
            if held.len() < 8 {
                return Step::Wait;
            }
            self.header_done = true;
            self.sent += 8;
            return Step::Forward(8);
        }
        let Some(len) = frame_len(held) else {
            return Step::Wait;
        };
        let frame = &held[..len];
        let channel = u16::from_be_bytes([frame[1], frame[2]]);
        if let Some(ch) = self.swallowing {
            if channel == ch && (frame[0] == 2 || frame[0] == 3) {
                return Step::Discard(len);
            }
            self.swallowing = None;
        }
        let Some((fault, through)) = self.faults.fault_for(self.n, frame, self.sent) else {
            self.sent += len;
            return Step::Forward(len);
        };
        self.faults.event(format!("conn {}: {fault}", self.n));
        self.sent += through;
        match fault.action {
            Action::Stall => Step::Stall(through),
            Action::Cut => Step::Cut(through),
            Action::Swallow => {
                self.swallowing = Some(channel);
                if through == 0 {
                    Step::Discard(len)
                } else {
                    self.then_discard = len - through;
                    Step::Forward(through)
                }
            }
        }
    }
}

/// The relay: the testkit's, with the AMQP faults placed on it.
pub struct Relay {
    relay: testkit_relay::Relay,
    faults: Arc<Faults>,
}

impl Relay {
    /// Listen on a free port of 127.0.0.1 and forward every connection to [`BROKER`].
    pub async fn start() -> Relay {
        let faults = Arc::new(Faults::default());
        let relay = testkit_relay::Relay::builder(BROKER)
            .hook(AmqpHook(faults.clone()))
            .start()
            .await
            .unwrap();
        Relay { relay, faults }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.relay.port()
    }

    /// An `amqp://` URL (guest, default vhost) through the relay, with `query` appended.
    pub fn url(&self, query: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?{query}", self.port())
    }

    /// Place a fault; it applies to connections accepted from now on as well as open ones.
    pub fn fault(&self, which: Which, at: At, action: Action) -> Arc<Fault> {
        let fault = Arc::new(Fault {
            which,
            at,
            action,
            fired: AtomicUsize::new(0),
        });
        self.faults.faults.lock().unwrap().push(fault.clone());
        fault
    }

    /// Remove every fault (connections already stalled stay stalled).
    pub fn clear_faults(&self) {
        self.faults.faults.lock().unwrap().clear();
    }

    /// Close every open connection, as a broker restart does.
    pub fn cut_all(&self) {
        self.relay.close_connections();
    }

    /// Close the connections that are stalled or blocked, as the broker does once its
    /// heartbeat notices them (until then it keeps what it delivered on them); returns how many.
    pub fn cut_stalled(&self) -> usize {
        let held: Vec<_> = self
            .relay
            .connections()
            .into_iter()
            .filter(|c| c.is_held())
            .collect();
        for conn in &held {
            conn.cut();
        }
        held.len()
    }

    /// Stop reading what the clients of the open connections send (a broker that stopped
    /// taking a connection's bytes), while what the broker sends still reaches them.
    pub fn block(&self) {
        for conn in self.relay.connections() {
            conn.block_client();
        }
    }

    /// Silence every open connection: nothing more is forwarded, the sockets stay open.
    pub fn freeze(&self) {
        for conn in self.relay.connections() {
            conn.stall();
        }
    }

    /// How many connections the relay accepted so far.
    pub fn accepted(&self) -> usize {
        self.relay.accepted()
    }

    /// What the relay did, in order (faults fired, connections ended), for failure messages.
    pub fn events(&self) -> String {
        let faults = self.faults.events.lock().unwrap().join("; ");
        format!("{faults}; {}", self.relay.events())
    }
}
