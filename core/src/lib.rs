//! mailroom-core: the broker-agnostic model of mailroom.
//!
//! A [`Message`] is a byte payload with ordered [`Headers`], an optional key and a stable id.
//! A [`Producer`] sends it to a [`Destination`] and learns when the broker confirmed it; a
//! [`Consumer`] receives [`Delivery`]s that must be settled once; [`Topology`] declares exchanges,
//! queues and bindings. Each [`Backend`] declares its [`Capabilities`], and asking for an absent one
//! is an [`ErrorKind::Unsupported`] error before any I/O. Where a backend declares
//! `transactions`, [`Backend::transactional`] opens a [`Transactional`] unit that commits the
//! inputs it consumed and the outputs it produced atomically. Cross-cutting work (the capability
//! check, retries, tracing, metrics, fault injection for tests) is written once as a
//! [`layer`] around any backend. Nothing here names a broker.

pub mod backend;
pub mod capabilities;
pub mod closed;
pub mod consumer;
pub mod delivery;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guarantee;
pub mod header_value;
pub mod headers;
pub mod json;
pub mod layer;
pub mod message;
pub mod operation;
pub mod pattern;
pub mod producer;
pub mod republish;
pub mod topology;
pub mod trace_context;
pub mod transaction;
pub mod url;
pub mod wire;

pub use backend::{Backend, BackendFactory, Registry};
pub use capabilities::{Capabilities, Capability, ClientSide, Implementation};
pub use closed::ClosedFlag;
pub use consumer::{Consumer, ConsumerExt, ConsumerOptions, Replay};
pub use delivery::{Delivery, DeliveryInfo, Nack, Settle, Settlement, TryAck};
pub use error::{Error, ErrorKind, Result};
pub use guarantee::{DeliveryGuarantee, DeliveryGuarantees};
pub use headers::{HeaderValue, Headers};
pub use layer::{Layer, LayerStack};
pub use message::{Message, MessageBuilder, MessageId, MessageParts, Timestamp};
pub use pattern::TopicPattern;
pub use producer::{Destination, PendingConfirm, Producer, ProducerOptions, Receipt, TryEnqueue};
pub use topology::{
    Binding, ExchangeKind, ExchangeSpec, HeaderMatch, Overflow, QueueSpec, Route, Topology,
};
pub use trace_context::TraceContext;
pub use transaction::{TransactionCounts, TransactionInput, TransactionOptions, Transactional};

#[cfg(feature = "mock")]
pub use consumer::MockConsumer;
#[cfg(feature = "mock")]
pub use producer::MockProducer;
#[cfg(feature = "mock")]
pub use topology::MockTopology;
#[cfg(feature = "mock")]
pub use transaction::MockTransactional;
