//! librdkafka errors mapped onto mailroom's error kinds.

use mailroom_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

use crate::config::is_secret;
use crate::BACKEND;

/// The mailroom kind of a librdkafka error code.
pub fn kind_of_code(code: Code) -> ErrorKind {
    match code {
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => {
            ErrorKind::NotFound
        }
        Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::MessageBatchTooLarge => {
            ErrorKind::PayloadTooLarge
        }
        Code::QueueFull => ErrorKind::QueueFull,
        Code::MessageTimedOut
        | Code::RequestTimedOut
        | Code::OperationTimedOut
        | Code::TimedOutQueue => ErrorKind::Timeout,
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::NetworkException
        | Code::UnknownBroker
        | Code::BrokerDestroy
        | Code::DestroyBroker => ErrorKind::Connection,
        Code::Authentication
        | Code::SaslAuthenticationFailed
        | Code::IllegalSASLState
        | Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed => ErrorKind::Auth,
        Code::TopicAlreadyExists => ErrorKind::Conflict,
        // A newer producer with the same transactional.id took over (zombie fencing).
        Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch => ErrorKind::Fenced,
        Code::InvalidConfig
        | Code::InvalidPartitions
        | Code::InvalidReplicationFactor
        | Code::InvalidReplicaAssignment
        | Code::InvalidTopic
        | Code::InvalidRequiredAcks
        | Code::InvalidTransactionTimeout
        | Code::InvalidArgument => ErrorKind::Config,
        Code::PurgeQueue | Code::PurgeInflight => ErrorKind::Closed,
        _ => ErrorKind::Broker,
    }
}

/// A mailroom error for a librdkafka error raised by `operation`.
pub fn map(error: KafkaError, operation: &'static str) -> Error {
    let kind = match &error {
        KafkaError::ClientConfig(..) => ErrorKind::Config,
        KafkaError::Canceled => ErrorKind::Closed,
        KafkaError::Nul(_) => ErrorKind::InvalidInput,
        // rdkafka gives no code for a failed admin request, though it carries one.
        KafkaError::AdminOp(code) => kind_of_code(*code),
        other => other
            .rdkafka_error_code()
            .map(kind_of_code)
            .unwrap_or(ErrorKind::Broker),
    };
    if let KafkaError::ClientConfig(_, description, key, _) = &error {
        // The value is left out on purpose: it may be a password.
        return client_config_error(key, description, operation);
    }
    let message = match kind {
        ErrorKind::NotFound => "topic or partition does not exist (declare the queue first)",
        ErrorKind::Connection => "the Kafka cluster is unreachable",
        ErrorKind::Timeout => "the Kafka operation timed out",
        ErrorKind::PayloadTooLarge => "the broker refused the message as too large",
        ErrorKind::Auth => "the broker refused the credentials or the ACLs deny it",
        ErrorKind::Fenced => {
            "a newer transactional unit with the same id took over (zombie fencing); this one \
             can no longer send or commit"
        }
        _ => "librdkafka reported an error",
    };
    Error::new(kind, message)
        .with_source(error)
        .with_backend(BACKEND)
        .with_operation(operation)
}

/// A `Config` error naming the invalid librdkafka property (never its value if it is a secret).
pub fn client_config_error(key: &str, description: &str, operation: &'static str) -> Error {
    let hint = if is_secret(key) {
        String::new()
    } else {
        " (see librdkafka's CONFIGURATION.md)".to_owned()
    };
    Error::config(format!(
        "invalid librdkafka property '{key}': {description}{hint}"
    ))
    .with_backend(BACKEND)
    .with_operation(operation)
}

/// A mailroom error for a librdkafka error code reported per item (admin results).
pub fn map_code(code: Code, what: String, operation: &'static str) -> Error {
    Error::new(kind_of_code(code), format!("{what}: {code}"))
        .with_backend(BACKEND)
        .with_operation(operation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaConfRes;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            kind_of_code(Code::UnknownTopicOrPartition),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind_of_code(Code::MessageSizeTooLarge),
            ErrorKind::PayloadTooLarge
        );
        assert_eq!(kind_of_code(Code::AllBrokersDown), ErrorKind::Connection);
        assert_eq!(kind_of_code(Code::MessageTimedOut), ErrorKind::Timeout);
        assert_eq!(kind_of_code(Code::TopicAlreadyExists), ErrorKind::Conflict);
        assert_eq!(kind_of_code(Code::ProducerFenced), ErrorKind::Fenced);
        assert_eq!(kind_of_code(Code::Fenced), ErrorKind::Fenced);
    }

    #[test]
    fn a_timed_out_admin_request_is_a_timeout() {
        let e = map(
            KafkaError::AdminOp(Code::OperationTimedOut),
            "declare_queue",
        );
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_temporary());
        let e = map(
            KafkaError::AdminOp(Code::BrokerTransportFailure),
            "delete_queue",
        );
        assert_eq!(e.kind(), ErrorKind::Connection);
    }

    #[test]
    fn config_errors_name_the_key_but_never_a_secret_value() {
        let e = map(
            KafkaError::ClientConfig(
                RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "bad value".into(),
                "sasl.password".into(),
                "hunter2".into(),
            ),
            "connect",
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("sasl.password"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }
}
