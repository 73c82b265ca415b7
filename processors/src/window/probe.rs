//! A view of a window stage's open windows, its watermark and the inputs it holds, for tests
//! and diagnostics; the operator updates it after every step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mailroom_core::Timestamp;

use super::Window;

/// A view of a window stage's open windows, for tests and diagnostics.
#[derive(Clone, Default)]
pub struct WindowProbe {
    state: Arc<Mutex<ProbeState>>,
}

#[derive(Default)]
pub(super) struct ProbeState {
    pub(super) open: BTreeMap<u64, (Option<Arc<str>>, Window, u64)>,
    pub(super) watermark: Option<Timestamp>,
    pub(super) held: usize,
}

impl WindowProbe {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every open window: its key, bounds and how many inputs it holds.
    pub fn open_windows(&self) -> Vec<(Option<String>, Window, u64)> {
        self.lock()
            .open
            .values()
            .map(|(k, w, n)| (k.as_deref().map(str::to_owned), *w, *n))
            .collect()
    }

    /// The current watermark (event time), if any item was seen.
    pub fn watermark(&self) -> Option<Timestamp> {
        self.lock().watermark
    }

    /// Input tokens the stage holds.
    pub fn held(&self) -> usize {
        self.lock().held
    }
}
