//! Pacing a sink's loop so that the pipeline's other tasks get to run.

use std::time::Duration;

/// Lets the pipeline's other tasks run now and then.
///
/// A source that always has a message ready and a sink that always confirms at once never make
/// the sink's task wait, so the settler and the shutdown signal would starve. By time, not by
/// count: a yield can move the task to another worker, whose cold caches cost far more than the
/// yield, so yielding every thousand fast items costs about a tenth of the throughput
/// (measured), every few milliseconds nothing visible.
pub(super) struct Pacer {
    since_check: u32,
    last_yield: std::time::Instant,
}

impl Pacer {
    /// How many items pass between looks at the clock.
    const CHECK_EVERY: u32 = 256;
    /// How long the sink works without waiting before it lets other tasks run.
    const YIELD_AFTER: Duration = Duration::from_millis(5);

    pub(super) fn new() -> Self {
        Pacer {
            since_check: 0,
            last_yield: std::time::Instant::now(),
        }
    }

    /// `items` more went through: yield if it has been a while.
    pub(super) async fn passed(&mut self, items: u32) {
        self.since_check += items;
        if self.since_check >= Self::CHECK_EVERY {
            self.since_check = 0;
            if self.last_yield.elapsed() >= Self::YIELD_AFTER {
                tokio::task::yield_now().await;
                self.last_yield = std::time::Instant::now();
            }
        }
    }
}
