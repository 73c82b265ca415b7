//! What can go wrong between a message and an event, each case naming the problem.

use std::fmt;

use mailroom_core::{Error, ErrorKind};

/// A message that is not a valid CloudEvent, or an event that cannot be a message.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloudEventError {
    /// The message is neither a binary-mode event (no specversion header) nor a structured one
    /// (its content type is not `application/cloudevents+json`).
    NotACloudEvent {
        /// The header a binary-mode event would carry, e.g. `ce_specversion`.
        expected_header: String,
        /// The message's content type, if it has one.
        content_type: Option<String>,
    },
    /// The spec version is one the SDK does not know (it knows `1.0` and `0.3`).
    UnknownSpecVersion {
        /// The value found.
        found: String,
    },
    /// A required attribute (`id`, `source`, `type`) is absent.
    MissingAttribute {
        /// The attribute, e.g. `source`.
        attribute: String,
        /// The header it was looked for under, e.g. `ce_source`.
        header: String,
    },
    /// An attribute is present but its value is not valid for its type (a `time` that is not
    /// RFC 3339, a `dataschema` that is not a URI).
    InvalidAttribute {
        /// The attribute.
        attribute: String,
        /// The header it came from.
        header: String,
        /// Why it is not valid.
        reason: String,
    },
    /// A structured-mode message whose content type names an event format other than JSON
    /// (such as `application/cloudevents+avro`) or batch mode.
    UnsupportedFormat {
        /// The content type found.
        content_type: String,
    },
    /// A structured-mode body that is not a CloudEvent in the JSON format.
    InvalidStructured {
        /// What the JSON reader reported.
        reason: String,
    },
    /// The event cannot be a mailroom message (a header value over the size limit, say).
    Message(Error),
    /// Any other failure the SDK reported.
    Sdk(cloudevents::message::Error),
}

impl fmt::Display for CloudEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloudEventError::NotACloudEvent {
                expected_header,
                content_type,
            } => {
                write!(
                    f,
                    "message is not a CloudEvent: no {expected_header} header (binary mode) and "
                )?;
                match content_type {
                    Some(ct) => write!(
                        f,
                        "content type {ct:?} is not application/cloudevents+json (structured mode)"
                    ),
                    None => f.write_str(
                        "no content type application/cloudevents+json (structured mode)",
                    ),
                }
            }
            CloudEventError::UnknownSpecVersion { found } => write!(
                f,
                "CloudEvent specversion {found:?} is not supported (1.0 and 0.3 are)"
            ),
            CloudEventError::MissingAttribute { attribute, header } => write!(
                f,
                "CloudEvent is missing its required attribute '{attribute}' (header {header})"
            ),
            CloudEventError::InvalidAttribute {
                attribute,
                header,
                reason,
            } => write!(
                f,
                "CloudEvent attribute '{attribute}' (header {header}) is not valid: {reason}"
            ),
            CloudEventError::UnsupportedFormat { content_type } => write!(
                f,
                "CloudEvent content type {content_type:?} names a format other than \
                 application/cloudevents+json; only the JSON format is read"
            ),
            CloudEventError::InvalidStructured { reason } => write!(
                f,
                "structured CloudEvent body is not a CloudEvent in the JSON format: {reason}"
            ),
            CloudEventError::Message(e) => write!(f, "CloudEvent cannot be a message: {e}"),
            CloudEventError::Sdk(e) => write!(f, "CloudEvents SDK: {e}"),
        }
    }
}

impl std::error::Error for CloudEventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CloudEventError::Message(e) => Some(e),
            CloudEventError::Sdk(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CloudEventError> for Error {
    /// A message that is not a valid event is a `Decode` error; an event that cannot be a
    /// message keeps the kind it had.
    fn from(e: CloudEventError) -> Self {
        match e {
            CloudEventError::Message(inner) => inner,
            other => Error::new(ErrorKind::Decode, other.to_string()).with_source(other),
        }
    }
}
