//! The hook a backend's test supplies: stop and start its broker, and declare what survives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a broker keeps across a restart, as its [`RestartHook`] declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Queues and the messages they hold survive a restart: every message sent must arrive.
    QueuesAndMessages,
    /// Nothing survives (an in-memory server): the scenario declares the queue again after each
    /// restart, and only messages sent after the last restart must arrive. What the run checks
    /// on such a broker is the weaker property: every send and receive succeeds or fails with a
    /// typed error in bounded time, and the same backend works again after the restart.
    Nothing,
}

/// Stops and starts the broker under test. The calls block (they run commands or kill
/// processes); the scenario makes them on a blocking thread.
pub trait RestartHook: Send + Sync + 'static {
    /// What the broker keeps across a restart.
    fn retention(&self) -> Retention;
    /// Stop (or kill) the broker; returns once it no longer serves.
    fn stop(&self) -> std::result::Result<(), String>;
    /// Start the broker again; returns once it serves.
    fn start(&self) -> std::result::Result<(), String>;
}

/// Stops and starts the broker through the hook, and starts it again on drop if a run ended
/// (failed, timed out) while it was stopped, so the broker is never left down.
pub(super) struct Restarter {
    pub(super) hook: Arc<dyn RestartHook>,
    pub(super) stopped: AtomicBool,
}

impl Restarter {
    pub(super) fn stop(&self) -> std::result::Result<(), String> {
        self.stopped.store(true, Ordering::SeqCst);
        self.hook.stop()
    }

    pub(super) fn start(&self) -> std::result::Result<(), String> {
        self.hook.start()?;
        self.stopped.store(false, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Restarter {
    fn drop(&mut self) {
        if self.stopped.load(Ordering::SeqCst) {
            for _ in 0..5 {
                if self.hook.start().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
