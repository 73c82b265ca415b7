//! The errors the in-memory broker raises, each naming the backend (and, where the caller does
//! not add it, the operation).

use mailroom_core::{Error, ErrorKind};

use crate::BACKEND;

/// Name this backend and `operation` on an error.
pub(crate) fn context(e: Error, operation: &'static str) -> Error {
    e.with_backend(BACKEND).with_operation(operation)
}

/// A declaration that differs from what is already declared.
pub(crate) fn conflict(message: String, operation: &'static str) -> Error {
    context(Error::new(ErrorKind::Conflict, message), operation)
}

/// A queue that was never declared (or was deleted).
pub(crate) fn no_queue(name: &str) -> Error {
    Error::not_found(format!("queue '{name}' does not exist; declare it first"))
        .with_backend(BACKEND)
}

/// An exchange that was never declared (or was deleted).
pub(crate) fn no_exchange(name: &str, operation: &'static str) -> Error {
    context(
        Error::not_found(format!(
            "exchange '{name}' does not exist; declare it first"
        )),
        operation,
    )
}

/// A queue deleted while a send or receive was using it.
pub(crate) fn queue_deleted(name: &str) -> Error {
    Error::not_found(format!("queue '{name}' was deleted"))
}

/// A full queue whose overflow policy rejects.
pub(crate) fn queue_full(name: &str, held: usize) -> Error {
    Error::new(
        ErrorKind::QueueFull,
        format!("queue '{name}' is full ({held} messages, overflow = reject)"),
    )
}
