//! One relayed connection: its state, the handle a test holds, and the two pumps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::hook::{Direction, Step, StreamHook};
use super::{Events, Mode};

/// What a single connection is doing, beside the relay-wide mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnState {
    /// Nothing more is forwarded either way; the sockets stay open until cut.
    stalled: bool,
    /// The client's bytes are no longer read (its writes back up once the socket buffers fill);
    /// the upstream's still reach it.
    blocked: bool,
    /// Both sockets are (being) closed.
    cut: bool,
}

/// A test's handle on one relayed connection.
#[derive(Clone)]
pub struct Connection {
    number: usize,
    state: Arc<watch::Sender<ConnState>>,
    events: Events,
}

impl Connection {
    pub(crate) fn new(number: usize, events: Events) -> Connection {
        let (state, _) = watch::channel(ConnState::default());
        Connection {
            number,
            state: Arc::new(state),
            events,
        }
    }

    /// Its place in the relay's accept order, from 1.
    pub fn number(&self) -> usize {
        self.number
    }

    /// Forward nothing more on it either way and keep both sockets open (a frozen peer); only
    /// [`Connection::cut`] (or the relay's) ends it.
    pub fn stall(&self) {
        if self
            .state
            .send_if_modified(|s| !std::mem::replace(&mut s.stalled, true))
        {
            self.events.push(format!("conn {}: stalled", self.number));
        }
    }

    /// Stop reading what the client sends (a peer that stopped taking its bytes) while what
    /// the upstream sends still reaches the client.
    pub fn block_client(&self) {
        if self
            .state
            .send_if_modified(|s| !std::mem::replace(&mut s.blocked, true))
        {
            self.events
                .push(format!("conn {}: client blocked", self.number));
        }
    }

    /// Close both sockets now.
    pub fn cut(&self) {
        if self
            .state
            .send_if_modified(|s| !std::mem::replace(&mut s.cut, true))
        {
            self.events.push(format!("conn {}: cut", self.number));
        }
    }

    /// Whether it is stalled or its client blocked.
    pub fn is_held(&self) -> bool {
        let s = *self.state.borrow();
        s.stalled || s.blocked
    }

    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.state.borrow().cut
    }

    fn subscribe(&self) -> watch::Receiver<ConnState> {
        self.state.subscribe()
    }
}

/// Everything one pump (one direction of one connection) needs.
pub(crate) struct Pump {
    pub(crate) conn: Connection,
    pub(crate) direction: Direction,
    pub(crate) mode: watch::Receiver<Mode>,
    pub(crate) hook: Option<Box<dyn StreamHook>>,
}

/// Why a pump stopped.
enum Stop {
    /// The connection is cut (by the test, the relay, a hook or either peer closing).
    Cut,
}

impl Pump {
    /// Copy `from` to `to` under the relay's mode, the connection's state and the hook, until
    /// the connection is cut or either side closes (which cuts the connection).
    pub(crate) async fn run(mut self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let _ = self.pump(&mut from, &mut to).await;
        self.conn.cut();
    }

    async fn pump(
        &mut self,
        from: &mut OwnedReadHalf,
        to: &mut OwnedWriteHalf,
    ) -> Result<(), Stop> {
        let mut conn = self.conn.subscribe();
        let mut buf = vec![0u8; 64 * 1024];
        let mut held: Vec<u8> = Vec::new();
        loop {
            // What we hold goes out first, as far as the hook lets it.
            while !held.is_empty() {
                let step = match self.hook.as_mut() {
                    Some(hook) => hook.step(&held),
                    None => Step::Forward(held.len()),
                };
                match step {
                    Step::Wait => break,
                    Step::Forward(n) => {
                        let n = n.clamp(1, held.len());
                        self.send(&mut conn, to, &held[..n]).await?;
                        held.drain(..n);
                    }
                    Step::Discard(n) => {
                        held.drain(..n.clamp(1, held.len()));
                    }
                    Step::Stall(n) => {
                        let n = n.min(held.len());
                        self.send(&mut conn, to, &held[..n]).await?;
                        self.conn.stall();
                        // For good: nothing more is read or forwarded until the cut.
                        return wait_for(&mut conn, |s| s.cut).await;
                    }
                    Step::Cut(n) => {
                        let n = n.min(held.len());
                        self.send(&mut conn, to, &held[..n]).await?;
                        return Err(Stop::Cut);
                    }
                }
            }
            // A blocked client is not read; a stalled connection is not read either, so that
            // the peer's writes back up as they would against a frozen host.
            wait_for(&mut conn, |s| {
                s.cut || !(s.stalled || (s.blocked && self.direction == Direction::ToUpstream))
            })
            .await?;
            let n = tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return Err(Stop::Cut),
                    Ok(n) => n,
                },
                cut = wait_for(&mut conn, |s| s.cut) => return cut,
            };
            held.extend_from_slice(&buf[..n]);
        }
    }

    /// Write `bytes` once the relay and the connection let them through, slowed as the relay
    /// says; a cut ends the wait.
    async fn send(
        &mut self,
        conn: &mut watch::Receiver<ConnState>,
        to: &mut OwnedWriteHalf,
        bytes: &[u8],
    ) -> Result<(), Stop> {
        if bytes.is_empty() {
            return Ok(());
        }
        let arrived = Instant::now();
        let mode = loop {
            let mode = *self.mode.borrow_and_update();
            let state = *conn.borrow_and_update();
            if state.cut || mode == Mode::Cut {
                return Err(Stop::Cut);
            }
            if !state.stalled && mode != Mode::Stall {
                break mode;
            }
            tokio::select! {
                changed = self.mode.changed() => if changed.is_err() { return Err(Stop::Cut) },
                changed = conn.changed() => if changed.is_err() { return Err(Stop::Cut) },
            }
        };
        if let Mode::Slow {
            latency,
            bytes_per_sec,
        } = mode
        {
            let pace = bytes_per_sec
                .map(|rate| Duration::from_secs_f64(bytes.len() as f64 / rate.max(1) as f64))
                .unwrap_or_default();
            let until = arrived + latency + pace;
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                cut = wait_for(conn, |s| s.cut) => return cut,
            }
        }
        tokio::select! {
            written = to.write_all(bytes) => written.map_err(|_| Stop::Cut),
            cut = wait_for(conn, |s| s.cut) => cut,
        }
    }
}

/// Wait until `ok` holds for the connection's state; `Err` if it is cut meanwhile (unless
/// `ok` itself waits for the cut, which then returns `Err` too).
async fn wait_for(
    conn: &mut watch::Receiver<ConnState>,
    ok: impl Fn(&ConnState) -> bool,
) -> Result<(), Stop> {
    match conn.wait_for(|s| s.cut || ok(s)).await {
        Ok(s) if !s.cut => Ok(()),
        _ => Err(Stop::Cut),
    }
}

/// The open connections, pruned of closed ones as it is read.
#[derive(Clone, Default)]
pub(crate) struct Connections(Arc<Mutex<Vec<Connection>>>);

impl Connections {
    pub(crate) fn add(&self, conn: Connection) {
        self.lock().push(conn);
    }

    pub(crate) fn open(&self) -> Vec<Connection> {
        let mut conns = self.lock();
        conns.retain(|c| !c.is_closed());
        conns.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
