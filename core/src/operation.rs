//! The operation names errors carry ([`Error::operation`](crate::Error::operation)).
//!
//! Every backend names the same operation the same way, so code that reports or matches on
//! `err.operation()` works whichever broker raised the error. A backend may add names for
//! steps only it has (RabbitMQ's `reconnect`, Kafka's `metadata`); the shared ones are here.

/// Opening a connection to the broker.
pub const CONNECT: &str = "connect";
/// Asking the broker for its version.
pub const SERVER_VERSION: &str = "server_version";
/// Asking the broker for its cluster id.
pub const CLUSTER_ID: &str = "cluster_id";
/// Opening a producer.
pub const PRODUCER: &str = "producer";
/// Opening a consumer on a queue.
pub const CONSUME: &str = "consume";
/// Opening a transactional unit.
pub const TRANSACTIONAL: &str = "transactional";
/// Sending a message (enqueue, send, batch send, a transactional send).
pub const SEND: &str = "send";
/// Waiting for a message.
pub const RECEIVE: &str = "receive";
/// Acknowledging a delivery.
pub const ACK: &str = "ack";
/// Negatively acknowledging a delivery: requeue or dead-letter.
pub const NACK: &str = "nack";
/// Waiting for every pending send.
pub const FLUSH: &str = "flush";
/// Closing a producer, consumer or connection.
pub const CLOSE: &str = "close";
/// Declaring an exchange.
pub const DECLARE_EXCHANGE: &str = "declare_exchange";
/// Deleting an exchange.
pub const DELETE_EXCHANGE: &str = "delete_exchange";
/// Declaring a queue.
pub const DECLARE_QUEUE: &str = "declare_queue";
/// Deleting a queue.
pub const DELETE_QUEUE: &str = "delete_queue";
/// Binding a queue to an exchange.
pub const BIND: &str = "bind";
/// Removing a binding.
pub const UNBIND: &str = "unbind";
/// [`Topology::queue_depth`](crate::Topology::queue_depth).
pub const QUEUE_DEPTH: &str = "queue_depth";
/// Committing a transaction.
pub const COMMIT: &str = "commit";
/// Aborting a transaction.
pub const ABORT: &str = "abort";
