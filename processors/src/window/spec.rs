//! What a window is and how a window stage is configured: its kind (tumbling, hopping,
//! session), its time (event or processing), lateness and the bound on held inputs.

use std::time::Duration;

use mailroom_core::Timestamp;

use crate::sink::Sink;

/// A window's bounds in milliseconds since the epoch: `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// First millisecond in the window.
    pub start: Timestamp,
    /// First millisecond after the window.
    pub end: Timestamp,
}

/// The result of one window for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Windowed<A> {
    /// The key (None for items without one).
    pub key: Option<String>,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub value: A,
    /// How many inputs were folded in.
    pub count: u64,
    /// Fired early because the stage held too many inputs; more results for the same key and
    /// window may follow and add up to the total.
    pub partial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Tumbling { size: u64 },
    Hopping { size: u64, hop: u64 },
    Session { gap: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Time {
    Event,
    Processing,
}

/// What kind of window, on which time, with which lateness.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    pub(super) kind: Kind,
    pub(super) time: Time,
    pub(super) max_out_of_order: u64,
    pub(super) lateness: u64,
    pub(super) late: Option<Sink>,
    pub(super) max_held: Option<usize>,
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl WindowSpec {
    fn new(kind: Kind) -> Self {
        WindowSpec {
            kind,
            time: Time::Event,
            max_out_of_order: 0,
            lateness: 0,
            late: None,
            max_held: None,
        }
    }

    /// Fixed, non-overlapping windows of `size` (at least 1 ms).
    pub fn tumbling(size: Duration) -> Self {
        Self::new(Kind::Tumbling {
            size: ms(size).max(1),
        })
    }

    /// Windows of `size` starting every `hop`; an item belongs to `size / hop` of them.
    pub fn hopping(size: Duration, hop: Duration) -> Self {
        let hop = ms(hop).max(1);
        Self::new(Kind::Hopping {
            size: ms(size).max(hop),
            hop,
        })
    }

    /// Per-key sessions that close after `gap` without an item.
    pub fn session(gap: Duration) -> Self {
        Self::new(Kind::Session {
            gap: ms(gap).max(1),
        })
    }

    /// Use each item's event time (the message timestamp, or what [`Flow::event_time`](crate::Flow::event_time) set).
    /// This is the default.
    pub fn event_time(mut self) -> Self {
        self.time = Time::Event;
        self
    }

    /// Use the time items arrive at the stage (tokio's clock, so a paused test clock drives it).
    pub fn processing_time(mut self) -> Self {
        self.time = Time::Processing;
        self
    }

    /// The watermark trails the largest event time seen by this much.
    pub fn max_out_of_order(mut self, d: Duration) -> Self {
        self.max_out_of_order = ms(d);
        self
    }

    /// Keep a window open this long after the watermark passed its end.
    pub fn allowed_lateness(mut self, d: Duration) -> Self {
        self.lateness = ms(d);
        self
    }

    /// Send late inputs (their original messages) here.
    pub fn late_to(mut self, sink: Sink) -> Self {
        self.late = Some(sink);
        self
    }

    /// Fire the oldest window early once the stage holds this many inputs (default: three
    /// quarters of the pipeline's `max_in_flight`, which must stay below it).
    pub fn max_held(mut self, n: usize) -> Self {
        self.max_held = Some(n.max(1));
        self
    }
}
