//! Keyed windows: tumbling, hopping and session; on event time (watermarks, allowed lateness,
//! late data to a side output) or processing time.
//!
//! Settle-after-result: a window keeps the tokens of every input folded into it and hands them
//! to its result, so those inputs are acked only once the result is confirmed downstream. A
//! crash before that leaves them unsettled; they are redelivered and the restarted pipeline
//! computes the window again. No state store is needed.
//!
//! Redelivered while held: a consumer-group rebalance can restart a partition from its last
//! commit while this stage still holds inputs from it (uncommitted, since their window is
//! open). With offsets from the broker, a pane recognises such an input by its partition and
//! offset: the new delivery's token replaces the old one (the broker ignores settles from a
//! revoked assignment) and the value is not folded twice. An input whose window already fired
//! is counted again in a new result for that window: a duplicate, as at-least-once allows.
//!
//! Event time: the watermark is the largest event time seen minus `max_out_of_order`. A window
//! fires once `end + allowed_lateness <= watermark`, exactly once (unless fired early, see
//! below). An input whose every window has already fired is late: it goes to the late side
//! output (or, with none configured, is counted and logged) and its input is acked after that.
//!
//! Bounded: the inputs of open windows count against the pipeline's `max_in_flight`. When a
//! window stage holds `max_held` inputs, it fires its oldest window early with `partial: true`
//! and starts that window afresh; results of one key and window then add up to the total.
//!
//! User code: a panic in `init` or `fold` is blamed on the input being added, which goes to
//! the stage's error policy (skip, dead-letter, ...) and is left out of the window; whatever
//! `fold` changed in the accumulator before it panicked stays. A panic in `merge` (two session
//! windows joined) cannot be blamed on one input and leaves both sessions half combined, so it
//! fails the stage: the pipeline stops and every input the stage held is redelivered.
//!
//! Time: event times come from messages and may be anything up to the largest timestamp; a
//! window whose end would lie past it ends at the largest timestamp.

//!
//! One job per file:
//! - `spec`: what a window is and how it is configured ([`WindowSpec`], [`Window`], [`Windowed`]);
//! - `stage`: the window stage on a flow ([`Flow::window`](crate::Flow::window), the aggregate);
//! - `pane`: one open window of one key, the inputs it holds and its redelivery check;
//! - `assign`: where an arriving item goes: the panes it folds into, or late;
//! - `operator`: the stage as a stream: clocks and watermark, firing, the timer, the probe;
//! - `probe`: a view of a stage's open windows for tests and diagnostics.

mod assign;
mod operator;
mod pane;
mod probe;
mod spec;
mod stage;

pub use probe::WindowProbe;
pub use spec::{Window, WindowSpec, Windowed};
pub use stage::WindowedFlow;

/// Header on a late input sent to the late side output: the end of the window it missed.
pub const LATE_WINDOW_END_HEADER: &str = "x-mailroom-late-window-end";
