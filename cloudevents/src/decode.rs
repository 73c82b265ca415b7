//! A mailroom message as an event: the content mode is read from the message itself, as the
//! bindings say (a content type starting `application/cloudevents` is structured mode, else
//! binary mode), and every failure names the attribute and header at fault.
//!
//! Binary mode hands the headers to the SDK's own event builder through its
//! `BinaryDeserializer` trait, so types, required attributes and extensions are decided exactly
//! as the SDK's Kafka binding decides them (every header value is a string attribute value).

use std::fmt;

use cloudevents::event::{EventBuilderError, SpecVersion};
use cloudevents::message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue};
use cloudevents::Event;
use mailroom_core::Message;

use crate::binding::{Binding, CONTENT_TYPE_HEADER, SPECVERSION};
use crate::error::CloudEventError;

/// The media type prefix that marks structured mode (any event format).
const CLOUDEVENTS_MEDIA_PREFIX: &str = "application/cloudevents";
/// The only event format read in structured mode.
const JSON_FORMAT: &str = "application/cloudevents+json";

/// An attribute the SDK refused, kept with its name while it passes through the SDK's error.
#[derive(Debug)]
struct Refused {
    attribute: String,
    header: String,
    reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.attribute, self.header, self.reason)
    }
}

impl std::error::Error for Refused {}

/// A message read as a binary-mode event by the SDK.
struct HeaderReader<'a> {
    binding: Binding,
    message: &'a Message,
    version: SpecVersion,
}

impl BinaryDeserializer for HeaderReader<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        self,
        mut visitor: V,
    ) -> cloudevents::message::Result<R> {
        let names = self.version.attribute_names();
        visitor = visitor.set_spec_version(self.version)?;
        for (header, value) in self.message.headers() {
            let Some(attribute) = self.binding.attribute_of(header) else {
                continue;
            };
            if attribute == SPECVERSION {
                continue;
            }
            let value = MessageAttributeValue::String(value.to_owned());
            let set = if names.contains(&attribute) {
                visitor.set_attribute(attribute, value)
            } else {
                visitor.set_extension(attribute, value)
            };
            visitor = set.map_err(|e| cloudevents::message::Error::Other {
                source: Box::new(Refused {
                    attribute: attribute.to_owned(),
                    header: header.to_owned(),
                    reason: e.to_string(),
                }),
            })?;
        }
        let payload = self.message.payload();
        if payload.is_empty() {
            visitor.end()
        } else {
            visitor.end_with_data(payload.to_vec())
        }
    }
}

/// The event a message carries, in whichever content mode it was sent.
pub(crate) fn event(message: &Message, binding: Binding) -> Result<Event, CloudEventError> {
    let content_type = message.headers().get(CONTENT_TYPE_HEADER);
    if let Some(ct) = content_type {
        if starts_with_ignore_case(ct, CLOUDEVENTS_MEDIA_PREFIX) {
            return structured(message, ct);
        }
    }
    let version_header = binding
        .read_prefixes()
        .iter()
        .map(|p| [p, SPECVERSION].concat())
        .find(|h| message.headers().contains(h));
    let Some(version_header) = version_header else {
        return Err(CloudEventError::NotACloudEvent {
            expected_header: binding.header_name(SPECVERSION),
            content_type: content_type.map(str::to_owned),
        });
    };
    let found = message.headers().get(&version_header).unwrap_or_default();
    let version =
        SpecVersion::try_from(found).map_err(|_| CloudEventError::UnknownSpecVersion {
            found: found.to_owned(),
        })?;
    let reader = HeaderReader {
        binding,
        message,
        version,
    };
    BinaryDeserializer::into_event(reader).map_err(|e| named(e, binding))
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn structured(message: &Message, content_type: &str) -> Result<Event, CloudEventError> {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case(JSON_FORMAT) {
        return Err(CloudEventError::UnsupportedFormat {
            content_type: content_type.to_owned(),
        });
    }
    serde_json::from_slice(message.payload()).map_err(|e| CloudEventError::InvalidStructured {
        reason: e.to_string(),
    })
}

/// The SDK's error with the attribute and header it is about, where it knows them.
fn named(e: cloudevents::message::Error, binding: Binding) -> CloudEventError {
    use cloudevents::message::Error as Sdk;
    let invalid = |attribute: &str, reason: String| CloudEventError::InvalidAttribute {
        attribute: attribute.to_owned(),
        header: binding.header_name(attribute),
        reason,
    };
    match e {
        Sdk::Other { source } => match source.downcast::<Refused>() {
            Ok(r) => CloudEventError::InvalidAttribute {
                attribute: r.attribute,
                header: r.header,
                reason: r.reason,
            },
            Err(source) => CloudEventError::Sdk(Sdk::Other { source }),
        },
        Sdk::EventBuilderError { source } => match source {
            EventBuilderError::MissingRequiredAttribute { attribute_name } => {
                CloudEventError::MissingAttribute {
                    attribute: attribute_name.to_owned(),
                    header: binding.header_name(attribute_name),
                }
            }
            EventBuilderError::ParseTimeError {
                attribute_name,
                source,
            } => invalid(attribute_name, source.to_string()),
            EventBuilderError::ParseUrlError {
                attribute_name,
                source,
            } => invalid(attribute_name, source.to_string()),
            EventBuilderError::InvalidUriRefError { attribute_name } => {
                invalid(attribute_name, "not a URI reference".to_owned())
            }
        },
        other => CloudEventError::Sdk(other),
    }
}
