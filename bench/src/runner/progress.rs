//! What a run shows while it runs: per-period counters for the stats lines, and the live
//! progress line on a terminal (an `indicatif` spinner with the elapsed time; nothing at all
//! when stderr is not a terminal, so logs and CI output stay clean).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(super) struct Period {
    pub(super) at: Instant,
    pub(super) sent_total: u64,
    pub(super) received_total: u64,
}

pub(super) struct Progress {
    /// `None` when progress is off or stderr is not a terminal.
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A live line labelled `label`, shown only if `enabled` and stderr is a terminal.
    pub(super) fn new(enabled: bool, label: String) -> Self {
        let target = ProgressDrawTarget::stderr();
        if !enabled || target.is_hidden() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, target);
        // The template is a constant; should it ever fail to parse, the default style stays.
        if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}") {
            bar.set_style(style);
        }
        bar.set_prefix(label);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    pub(super) fn show(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(line.to_owned());
        }
    }

    pub(super) fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
