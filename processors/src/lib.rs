//! mailroom-processors: consume, transform, produce — and settle each input only after its output
//! is confirmed.
//!
//! This first piece is the [`Bridge`]: one source consumer, one transform, one sink producer, a
//! bounded number of messages in flight. It is at-least-once by construction: an input is acked
//! only when the message derived from it is confirmed by the sink (or it was filtered out); a
//! transform error dead-letters the input with the error as the reason; a failed send requeues
//! it. The full pipeline builder (stages, windows, ordering modes) grows from here.

mod bridge;

pub use bridge::{Bridge, BridgeStats, Transform};
