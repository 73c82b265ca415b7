//! Mapping `aws-sdk-sqs` and `aws-sdk-sns` errors into mailroom error kinds.

use std::error::Error as StdError;
use std::fmt::Debug;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use mailroom_core::{Error, ErrorKind};

use crate::BACKEND;

/// A mailroom error from an SDK call, with `operation` as context and the SDK error as source.
pub(crate) fn from_sdk<E, R>(err: SdkError<E, R>, operation: &'static str) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    let (kind, temporary, message) = match &err {
        SdkError::ConstructionFailure(_) => (
            ErrorKind::Config,
            false,
            "the request could not be built".to_owned(),
        ),
        SdkError::TimeoutError(_) => (
            ErrorKind::Timeout,
            true,
            "the call timed out (operation_timeout_ms bounds it; a receive adds its wait_time_ms)"
                .to_owned(),
        ),
        SdkError::DispatchFailure(f) => {
            let kind = if f.is_timeout() {
                ErrorKind::Timeout
            } else if f.is_user() {
                ErrorKind::Config
            } else {
                ErrorKind::Connection
            };
            (
                kind,
                kind != ErrorKind::Config,
                format!(
                    "the SQS endpoint could not be reached: {}",
                    DisplayErrorContext(&err)
                ),
            )
        }
        SdkError::ResponseError(_) => match broken_off(&err) {
            Some(kind) => (
                kind,
                true,
                format!(
                    "the SQS endpoint's answer broke off before its end: {}",
                    DisplayErrorContext(&err)
                ),
            ),
            None => (
                ErrorKind::Broker,
                true,
                format!(
                    "the SQS endpoint's answer could not be read: {}",
                    DisplayErrorContext(&err)
                ),
            ),
        },
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or("unknown");
            let (kind, temporary) = classify_code(code, false);
            (
                kind,
                temporary,
                format!(
                    "{code}: {}",
                    e.err().message().unwrap_or("no message from the service")
                ),
            )
        }
        _ => (
            ErrorKind::Broker,
            false,
            DisplayErrorContext(&err).to_string(),
        ),
    };
    Error::new(kind, message)
        .set_temporary(temporary)
        .with_backend(BACKEND)
        .with_operation(operation)
        .with_source(err)
}

/// `Connection` or `Timeout` if an answer whose head arrived broke off in transport; `None` if
/// the cause is something else.
///
/// The SDK reports such an answer as a response error, the same variant as any answer it could
/// not read; left at that, a peer that hung up or stalled mid-answer would read as a fault of
/// the service, not of the path to it.
fn broken_off(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(if io.kind() == std::io::ErrorKind::TimedOut {
                ErrorKind::Timeout
            } else {
                ErrorKind::Connection
            });
        }
        // The SDK's stalled-stream protection ends a body that delivered nothing for its grace
        // period (aws-smithy-runtime's `minimum_throughput::Error`, a type it does not export,
        // hence the name). tests/silent_peer.rs has a body stall run into it.
        if format!("{e:?}").starts_with("ThroughputBelowMinimum") {
            return Some(ErrorKind::Timeout);
        }
        source = e.source();
    }
    None
}

/// The kind and temporariness of an SQS error code (from a call or a batch entry).
pub(crate) fn classify_code(code: &str, sender_fault: bool) -> (ErrorKind, bool) {
    // Query-protocol codes arrive with an `AWS.SimpleQueueService.` prefix on some servers.
    let short = code.rsplit('.').next().unwrap_or(code);
    match short {
        // SNS (exchanges) answers with its own codes: NotFound, InvalidParameter, ...
        "QueueDoesNotExist" | "NonExistentQueue" | "ResourceNotFoundException" | "NotFound" => {
            (ErrorKind::NotFound, false)
        }
        "QueueAlreadyExists" | "QueueNameExists" => (ErrorKind::Conflict, false),
        "QueueDeletedRecently" | "PurgeQueueInProgress" => (ErrorKind::Conflict, true),
        "AccessDenied"
        | "AccessDeniedException"
        | "AuthorizationError"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "InvalidSecurityToken"
        | "ExpiredToken"
        | "MissingAuthenticationToken"
        | "IncompleteSignature" => (ErrorKind::Auth, false),
        "RequestThrottled"
        | "ThrottlingException"
        | "Throttled"
        | "Throttling"
        | "KmsThrottled"
        | "OverLimit"
        | "ServiceUnavailable"
        | "InternalError"
        | "InternalFailure" => (ErrorKind::Broker, true),
        "InvalidParameterValue"
        | "InvalidParameter"
        | "InvalidAttributeName"
        | "InvalidAttributeValue"
        | "InvalidMessageContents"
        | "MissingParameter"
        | "UnsupportedOperation"
        | "TooManyEntriesInBatchRequest"
        | "BatchRequestTooLong"
        | "InvalidBatchEntryId"
        | "BatchEntryIdsNotDistinct"
        | "EmptyBatchRequest"
        | "InvalidIdFormat"
        | "ReceiptHandleIsInvalid"
        | "MessageNotInflight"
        | "ValidationError"
        | "InvalidAddress" => (ErrorKind::InvalidInput, false),
        _ if sender_fault => (ErrorKind::Rejected, false),
        _ => (ErrorKind::Broker, true),
    }
}

/// A batch entry the service failed, as a mailroom error.
pub(crate) fn from_entry(
    code: &str,
    message: Option<&str>,
    sender_fault: bool,
    operation: &'static str,
) -> Error {
    let (kind, temporary) = classify_code(code, sender_fault);
    Error::new(
        kind,
        format!(
            "{code}: {}",
            message.unwrap_or("no message from the service")
        ),
    )
    .set_temporary(temporary && !sender_fault)
    .with_backend(BACKEND)
    .with_operation(operation)
}

/// Add backend and operation context to an error made here.
pub(crate) fn context(err: Error, operation: &'static str) -> Error {
    err.with_backend(BACKEND).with_operation(operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose source is the one it holds, as the SDK's response error wraps what broke.
    #[derive(Debug)]
    struct Wrap(Box<dyn StdError + Send + Sync>);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("response error")
        }
    }

    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    /// Stands in for aws-smithy-runtime's unexported stalled-stream error, by its Debug form.
    #[derive(Debug)]
    enum Stall {
        ThroughputBelowMinimum,
    }

    impl std::fmt::Display for Stall {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl StdError for Stall {}

    #[test]
    fn an_answer_broken_off_in_transport_is_a_connection_or_timeout_error() {
        let io = |kind| Wrap(Box::new(Wrap(Box::new(std::io::Error::from(kind)))));
        assert_eq!(
            broken_off(&io(std::io::ErrorKind::UnexpectedEof)),
            Some(ErrorKind::Connection)
        );
        assert_eq!(
            broken_off(&io(std::io::ErrorKind::TimedOut)),
            Some(ErrorKind::Timeout)
        );
        let stalled = Wrap(Box::new(Stall::ThroughputBelowMinimum));
        assert_eq!(broken_off(&stalled), Some(ErrorKind::Timeout));
        let other = Wrap("unexpected end of JSON".into());
        assert_eq!(broken_off(&other), None);
    }
}
