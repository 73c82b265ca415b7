//! Where each part of a long test is, so one that runs out of time names the step it hung in.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where each part of a test is, so a test that runs out of time says where it was waiting.
#[derive(Clone, Default)]
pub struct Waypoints(Arc<Mutex<BTreeMap<String, String>>>);

impl Waypoints {
    /// Record that `who` (a task of the test) is now doing `what`.
    pub fn at(&self, who: &str, what: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(who.to_owned(), what.into());
    }

    /// Every part's last recorded step.
    pub fn report(&self) -> String {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return "no step recorded".into();
        }
        map.iter()
            .map(|(who, what)| format!("{who}: {what}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Run a test body with an overall bound, so a hang fails the test instead of holding the
/// suite; the failure names the step each part of the test was waiting in.
///
/// # Panics
///
/// When `body` has not finished within `limit`: this is for tests, where a panic is the failure.
pub async fn within<T>(limit: Duration, waypoints: &Waypoints, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!(
            "the test did not finish within {limit:?}; it was waiting in: {}",
            waypoints.report()
        ),
    }
}
