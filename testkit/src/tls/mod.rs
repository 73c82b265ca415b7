//! Private TLS/SASL brokers for the backends' `tls` tests: certificates made at test time
//! ([`TestCerts`]), a private RabbitMQ node with TLS listeners ([`PrivateRabbitMq`]), a private
//! Apache Kafka with SSL and SASL listeners ([`PrivateKafka`]), and the capture of every log line
//! a test's connections write, to scan for secrets ([`CapturedLogs`]); the checks every backend's
//! `tls` tests make ([`round_trip`], [`assert_refused`]).
//!
//! The shared brokers of `scripts/brokers.sh` are never touched: each private broker has its
//! own ports, data directory and (RabbitMQ) node name and Erlang distribution port, is started
//! once per test binary, and is stopped when the test process ends, however it ends (see
//! [`process`]).

mod certs;
mod checks;
mod kafka;
mod logs;
pub mod process;
mod rabbitmq;

pub use certs::{TestCerts, OTHER_HOST};
pub use checks::{assert_refused, round_trip};
pub use kafka::PrivateKafka;
pub use logs::{assert_no_secret, CapturedLogs};
pub use rabbitmq::PrivateRabbitMq;

/// A user a private broker knows: SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN on Kafka, the default
/// user (all permissions on `/`) on RabbitMQ.
#[derive(Clone)]
pub struct TestUser {
    /// The user name.
    pub name: String,
    /// The password (never printed: this type has no `Debug`).
    pub password: String,
}
