//! lapin's errors as mailroom [`Error`]s: AMQP reply codes become kinds a caller can match on.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind as LapinKind;
use mailroom_core::{Error, ErrorKind};

use crate::BACKEND;

/// Map a lapin error raised by `operation` on `what` (a queue, an exchange, the broker).
pub(crate) fn map(error: lapin::Error, operation: &'static str, what: &str) -> Error {
    let (kind, message) = classify(&error, what);
    let temporary = is_connection_loss(&error) || kind.default_temporary();
    Error::new(kind, message)
        .set_temporary(temporary)
        .with_backend(BACKEND)
        .with_operation(operation)
        .with_source(error)
}

fn classify(error: &lapin::Error, what: &str) -> (ErrorKind, String) {
    match error.kind() {
        LapinKind::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str();
            match amqp.kind() {
                AMQPErrorKind::Soft(soft) => match soft {
                    AMQPSoftError::NOTFOUND => {
                        (ErrorKind::NotFound, format!("{what} does not exist"))
                    }
                    AMQPSoftError::PRECONDITIONFAILED => (
                        ErrorKind::Conflict,
                        format!("{what} conflicts with what the broker already has"),
                    ),
                    AMQPSoftError::ACCESSREFUSED => (
                        ErrorKind::Auth,
                        format!("access to {what} refused by the broker"),
                    ),
                    AMQPSoftError::RESOURCELOCKED => (
                        ErrorKind::Conflict,
                        format!("{what} is locked (exclusive to another connection)"),
                    ),
                    AMQPSoftError::CONTENTTOOLARGE => (
                        ErrorKind::PayloadTooLarge,
                        format!("the broker refused a message to {what} as too large"),
                    ),
                    AMQPSoftError::NOROUTE | AMQPSoftError::NOCONSUMERS => (
                        ErrorKind::Unroutable,
                        format!("no queue took the message sent to {what}"),
                    ),
                },
                AMQPErrorKind::Hard(hard) => match hard {
                    AMQPHardError::CONNECTIONFORCED => (
                        ErrorKind::Connection,
                        "the broker closed the connection (restart or shutdown)".into(),
                    ),
                    AMQPHardError::NOTALLOWED => (
                        ErrorKind::Auth,
                        format!(
                            "the broker refused access ({text}): check that the vhost exists \
                             and the user has permissions on it"
                        ),
                    ),
                    AMQPHardError::INVALIDPATH => {
                        (ErrorKind::Config, format!("invalid vhost path ({text})"))
                    }
                    AMQPHardError::RESOURCEERROR => (
                        ErrorKind::Broker,
                        format!("the broker is short of a resource ({text})"),
                    ),
                    _ => (
                        ErrorKind::Broker,
                        format!("the broker closed the connection: {text}"),
                    ),
                },
            }
        }
        LapinKind::IOError(_) | LapinKind::MissingHeartbeatError => (
            ErrorKind::Connection,
            "the connection to the broker failed".into(),
        ),
        LapinKind::InvalidChannelState(..)
        | LapinKind::InvalidConnectionState(_)
        | LapinKind::InvalidChannel(_) => (
            ErrorKind::Connection,
            "the channel or connection is no longer open".into(),
        ),
        LapinKind::ChannelsLimitReached => (
            ErrorKind::Broker,
            "the connection has used every channel the broker allows".into(),
        ),
        _ => (ErrorKind::Broker, format!("operation on {what} failed")),
    }
}

/// Whether the error means the connection (or the channel under us) went away, so the same
/// operation may succeed on a fresh connection.
pub(crate) fn is_connection_loss(error: &lapin::Error) -> bool {
    match error.kind() {
        LapinKind::IOError(_)
        | LapinKind::MissingHeartbeatError
        | LapinKind::InvalidChannelState(..)
        | LapinKind::InvalidConnectionState(_)
        | LapinKind::InvalidChannel(_) => true,
        LapinKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)
        ),
        _ => false,
    }
}

/// Why a TLS handshake failed, as far as it tells a user what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The server's certificate is not signed by a trusted CA.
    Untrusted,
    /// The server's certificate does not name the host connected to.
    NameMismatch,
    /// Another problem with the server's certificate (expired, not yet valid, revoked, ...).
    Certificate(String),
    /// What came back was not TLS: the port is not a TLS listener.
    NotTls,
}

/// The TLS failure behind a connect error, if it was one: rustls's error inside the I/O error
/// lapin reports (downcast, not matched on text).
pub(crate) fn tls_failure(error: &lapin::Error) -> Option<TlsFailure> {
    use rustls::{CertificateError, Error as Rustls};
    let LapinKind::IOError(io) = error.kind() else {
        return None;
    };
    let rustls = io.get_ref()?.downcast_ref::<Rustls>()?;
    Some(match rustls {
        Rustls::InvalidCertificate(CertificateError::UnknownIssuer) => TlsFailure::Untrusted,
        Rustls::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => TlsFailure::NameMismatch,
        Rustls::InvalidCertificate(other) => TlsFailure::Certificate(format!("{other:?}")),
        Rustls::InvalidMessage(_) | Rustls::InappropriateMessage { .. } => TlsFailure::NotTls,
        other => TlsFailure::Certificate(other.to_string()),
    })
}

/// The AMQP reply code of a protocol error, if it is one.
pub(crate) fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        LapinKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn io_error(inner: rustls::Error) -> lapin::Error {
        LapinKind::IOError(Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            inner,
        )))
        .into()
    }

    #[test]
    fn rustls_handshake_errors_are_read_as_types() {
        use rustls::CertificateError;
        for (inner, expected) in [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsFailure::Untrusted,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                TlsFailure::NameMismatch,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                TlsFailure::Certificate("Expired".into()),
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                TlsFailure::NotTls,
            ),
        ] {
            assert_eq!(tls_failure(&io_error(inner)), Some(expected));
        }
        // An I/O error that is not TLS's: not a TLS failure.
        let refused: lapin::Error = LapinKind::IOError(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
        .into();
        assert_eq!(tls_failure(&refused), None);
    }
}
