//! Helpers shared by this crate's integration tests.

// Each test binary compiles this module and uses only a part of it.
#![allow(dead_code)]

pub mod relay;
pub mod restart;

// Not every test binary that compiles this module uses them.
#[allow(unused_imports)]
pub use mailroom_testkit::{within, Waypoints};

/// A queue name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
