//! The protocol hook: what a test that knows the wire format decides, chunk by chunk.

/// Which way bytes travel through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client (the code under test) to the upstream (the broker).
    ToUpstream,
    /// From the upstream back to the client.
    ToClient,
}

/// What the relay does with the head of the bytes it holds for one direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Decide nothing until more bytes have arrived.
    Wait,
    /// Forward this many bytes (more than zero), then ask again about the rest.
    Forward(usize),
    /// Throw this many bytes (more than zero) away, then ask again about the rest.
    Discard(usize),
    /// Forward this many bytes (possibly zero), then stall the connection: nothing more goes
    /// either way and both sockets stay open until the connection is cut.
    Stall(usize),
    /// Forward this many bytes (possibly zero), then close both sockets.
    Cut(usize),
}

/// Sees the bytes of one direction of one connection before they are forwarded, and decides
/// what becomes of them. The relay keeps one per direction per connection, so a hook may keep
/// parsing state (a frame boundary, an HTTP head) across chunks.
pub trait StreamHook: Send {
    /// Decide about the head of `held`, the bytes received and not yet forwarded (never
    /// empty). A step's count is capped at `held.len()`.
    fn step(&mut self, held: &[u8]) -> Step;
}

/// Opens a [`StreamHook`] for each direction of each new connection.
pub trait Hook: Send + Sync + 'static {
    /// The hook for `direction` of the `connection`-th connection the relay accepted
    /// (counted from 1); `None` forwards that direction untouched.
    fn open(&self, connection: usize, direction: Direction) -> Option<Box<dyn StreamHook>>;
}
