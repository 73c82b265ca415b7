//! The one error type of mailroom, with a kind retry code can match on and a flag it can trust.

use std::error::Error as StdError;
use std::fmt;

use crate::message::Message;

/// What went wrong, coarse enough to match on and stable across backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A URL, option or declaration is invalid; fixing the input is the only remedy.
    Config,
    /// An argument to an operation is invalid (an empty name, a bad pattern, a bad header).
    InvalidInput,
    /// The broker could not be reached or the connection broke.
    Connection,
    /// Authentication or authorisation was refused.
    Auth,
    /// The TLS handshake failed: the server's certificate is not trusted or does not name the
    /// host, or the server does not speak TLS on that port. Fixing the trust roots, the host
    /// name or the port is the remedy; retrying unchanged is not.
    Tls,
    /// An operation did not finish within its bound.
    Timeout,
    /// The backend declares it lacks the capability this operation needs.
    Unsupported,
    /// The payload (or the whole message) exceeds the backend's maximum size.
    PayloadTooLarge,
    /// A queue, exchange or topic does not exist.
    NotFound,
    /// A declaration conflicts with an existing one with different properties.
    Conflict,
    /// A bounded queue is full and its overflow policy rejects new messages.
    QueueFull,
    /// A message could not be routed to any queue.
    Unroutable,
    /// The broker refused to take a message (a negative confirm).
    Rejected,
    /// A payload could not be decoded into the requested type.
    Decode,
    /// A payload could not be encoded.
    Encode,
    /// The broker returned an error not covered by a more specific kind.
    Broker,
    /// The producer, consumer or connection has been closed.
    Closed,
    /// A delivery was already settled (only reachable through backend misuse).
    AlreadySettled,
    /// A transaction was rolled back: its outputs are discarded and its inputs will be received
    /// again. Temporary: the transactional unit carries on.
    Aborted,
    /// Another instance with the same transactional identity took over, so this one may not
    /// commit anything any more. Permanent: stop this instance.
    Fenced,
}

impl ErrorKind {
    /// Whether an error of this kind is usually worth retrying unchanged.
    pub fn default_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection
                | ErrorKind::Timeout
                | ErrorKind::QueueFull
                | ErrorKind::Broker
                | ErrorKind::Aborted
        )
    }

    /// A short, stable name for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Connection => "connection",
            ErrorKind::Auth => "auth",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::PayloadTooLarge => "payload too large",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::QueueFull => "queue full",
            ErrorKind::Unroutable => "unroutable",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Decode => "decode",
            ErrorKind::Encode => "encode",
            ErrorKind::Broker => "broker",
            ErrorKind::Closed => "closed",
            ErrorKind::AlreadySettled => "already settled",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Fenced => "fenced",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every mailroom operation.
///
/// It carries the kind, whether retrying may help, the backend and operation it came from, a
/// human message, the underlying error, and, for a send that failed, the message itself so that
/// the caller can retry or park it instead of losing it.
pub struct Error {
    kind: ErrorKind,
    temporary: bool,
    backend: Option<&'static str>,
    operation: Option<&'static str>,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    undelivered: Option<Box<Message>>,
}

/// Shorthand for results of mailroom operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message saying what was wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            temporary: kind.default_temporary(),
            backend: None,
            operation: None,
            message: message.into(),
            source: None,
            undelivered: None,
        }
    }

    /// A `Config` error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// An `InvalidInput` error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// An `Unsupported` error naming the missing capability.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// A `Closed` error.
    pub fn closed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Closed, message)
    }

    /// A `NotFound` error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Keep `source` as the underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Keep an already boxed cause.
    pub fn with_boxed_source(mut self, source: Box<dyn StdError + Send + Sync + 'static>) -> Self {
        self.source = Some(source);
        self
    }

    /// Name the backend the error came from.
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Name the operation that failed (`send`, `declare_queue`, ...).
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Override whether retrying may help.
    pub fn set_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// Attach the message a failed send did not deliver, so the caller gets it back.
    pub fn with_undelivered(mut self, message: Message) -> Self {
        self.undelivered = Some(Box::new(message));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same operation may succeed (connection loss, timeout, full queue).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The backend that raised the error, when known.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// The operation that failed, when known.
    pub fn operation(&self) -> Option<&'static str> {
        self.operation
    }

    /// The human description, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message a failed send did not deliver, if any.
    pub fn undelivered(&self) -> Option<&Message> {
        self.undelivered.as_deref()
    }

    /// Take back the message a failed send did not deliver.
    pub fn take_undelivered(&mut self) -> Option<Message> {
        self.undelivered.take().map(|m| *m)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.backend, self.operation) {
            (Some(b), Some(o)) => write!(f, "{b} {o}: ")?,
            (Some(b), None) => write!(f, "{b}: ")?,
            (None, Some(o)) => write!(f, "{o}: ")?,
            (None, None) => {}
        }
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload of an undelivered message is left out: it can be large or sensitive.
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("temporary", &self.temporary)
            .field("backend", &self.backend)
            .field("operation", &self.operation)
            .field("message", &self.message)
            .field("source", &self.source)
            .field(
                "undelivered",
                &self.undelivered.as_ref().map(|m| m.id().to_string()),
            )
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_backend_operation_kind_and_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Connection, "cannot reach 127.0.0.1:1")
            .with_backend("rabbitmq")
            .with_operation("connect")
            .with_source(io);
        assert_eq!(
            err.to_string(),
            "rabbitmq connect: connection: cannot reach 127.0.0.1:1: refused"
        );
        assert!(err.is_temporary());
        assert!(StdError::source(&err).is_some());
    }

    #[test]
    fn permanent_kinds_are_not_temporary_unless_overridden() {
        assert!(!Error::config("x").is_temporary());
        assert!(Error::config("x").set_temporary(true).is_temporary());
        // A refused certificate stays refused however often it is retried.
        let tls = Error::new(ErrorKind::Tls, "certificate not trusted");
        assert!(!tls.is_temporary());
        assert_eq!(tls.kind().as_str(), "tls");
    }

    #[test]
    fn undelivered_message_is_returned_to_the_caller() {
        let msg = Message::new("payload");
        let id = msg.id().clone();
        let mut err = Error::new(ErrorKind::Rejected, "nacked").with_undelivered(msg);
        assert!(format!("{err:?}").contains(&id.to_string()));
        assert!(!format!("{err:?}").contains("payload\""));
        assert_eq!(err.take_undelivered().unwrap().id(), &id);
    }
}
