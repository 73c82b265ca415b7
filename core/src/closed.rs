//! Whether a backend's connection was closed, and the error an operation on it then gets.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Set once by a backend's `close`; every later operation checks it before any I/O.
///
/// One type so that every backend refuses the same way: a `Closed` error naming the backend
/// and the operation.
#[derive(Debug)]
pub struct ClosedFlag {
    backend: &'static str,
    closed: AtomicBool,
}

impl ClosedFlag {
    /// An open connection of `backend`.
    pub fn new(backend: &'static str) -> Self {
        ClosedFlag {
            backend,
            closed: AtomicBool::new(false),
        }
    }

    /// Mark the connection closed; true if it was open until now.
    pub fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// Whether the connection was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `Ok` while open, else a `Closed` error naming the backend and `operation`.
    pub fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.is_closed() {
            Err(
                Error::closed(format!("the {} backend connection is closed", self.backend))
                    .with_backend(self.backend)
                    .with_operation(operation),
            )
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn a_closed_connection_refuses_naming_backend_and_operation() {
        let flag = ClosedFlag::new("demo");
        assert!(flag.check_open("send").is_ok());
        assert!(flag.close());
        assert!(!flag.close(), "closing twice reports the first close only");
        let err = flag.check_open("send").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert_eq!(err.backend(), Some("demo"));
        assert_eq!(err.operation(), Some("send"));
    }
}
