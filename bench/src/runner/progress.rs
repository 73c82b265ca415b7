//! What a run shows while it runs: per-period counters for the stats lines, and the live
//! progress line on a terminal.

use std::io::Write as _;
use std::time::Instant;

pub(super) struct Period {
    pub(super) at: Instant,
    pub(super) sent_total: u64,
    pub(super) received_total: u64,
}

pub(super) struct Progress {
    pub(super) enabled: bool,
    pub(super) label: String,
}

impl Progress {
    pub(super) fn show(&self, line: &str) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}: {line}", self.label);
            let _ = err.flush();
        }
    }

    pub(super) fn clear(&self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}
