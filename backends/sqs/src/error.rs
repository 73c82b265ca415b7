//! Mapping `aws-sdk-sqs` errors into mailroom error kinds.

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
            "the call timed out (operation_timeout_ms bounds it)".to_owned(),
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
        SdkError::ResponseError(_) => (
            ErrorKind::Broker,
            true,
            format!(
                "the SQS endpoint sent a response that is not SQS's: {}",
                DisplayErrorContext(&err)
            ),
        ),
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

/// The kind and temporariness of an SQS error code (from a call or a batch entry).
pub(crate) fn classify_code(code: &str, sender_fault: bool) -> (ErrorKind, bool) {
    // Query-protocol codes arrive with an `AWS.SimpleQueueService.` prefix on some servers.
    let short = code.rsplit('.').next().unwrap_or(code);
    match short {
        "QueueDoesNotExist" | "NonExistentQueue" | "ResourceNotFoundException" => {
            (ErrorKind::NotFound, false)
        }
        "QueueAlreadyExists" | "QueueNameExists" => (ErrorKind::Conflict, false),
        "QueueDeletedRecently" | "PurgeQueueInProgress" => (ErrorKind::Conflict, true),
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "InvalidSecurityToken"
        | "ExpiredToken"
        | "MissingAuthenticationToken"
        | "IncompleteSignature" => (ErrorKind::Auth, false),
        "RequestThrottled"
        | "ThrottlingException"
        | "Throttling"
        | "KmsThrottled"
        | "OverLimit"
        | "ServiceUnavailable"
        | "InternalError"
        | "InternalFailure" => (ErrorKind::Broker, true),
        "InvalidParameterValue"
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
pub(crate) fn ctx(err: Error, operation: &'static str) -> Error {
    err.with_backend(BACKEND).with_operation(operation)
}
