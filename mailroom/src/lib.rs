//! mailroom: one set of traits over many message brokers.
//!
//! ```no_run
//! # async fn demo() -> mailroom::Result<()> {
//! use mailroom::{Destination, Message, QueueSpec};
//!
//! let broker = mailroom::connect("memory://").await?;
//! broker.topology().declare_queue(&QueueSpec::new("orders")).await?;
//!
//! let producer = broker.producer().await?;
//! producer
//!     .send(&Destination::queue("orders"), Message::new("order #1"))
//!     .await?; // resolves once the broker confirmed it
//!
//! let mut consumer = broker.consumer("orders", Default::default()).await?;
//! let delivery = consumer.receive().await?;
//! println!("{:?}", delivery.message().payload());
//! delivery.ack().await?; // settled exactly once; dropping it unsettled requeues
//! # Ok(()) }
//! ```
//!
//! The in-memory broker is always compiled in; cargo features `rabbitmq`, `kafka` and `sqs` add
//! the others, each picked at run time by its URL scheme. The default feature `processors` adds
//! the pipelines (`mailroom::processors`); `cloudevents` adds `mailroom::cloudevents` (a message
//! as a CNCF CloudEvent and back, on every broker). Measuring brokers is the `mailroom-bench` crate, the
//! `mailroom` command the `mailroom-cli` crate.

use std::sync::Arc;

#[cfg(feature = "cloudevents")]
pub use mailroom_cloudevents as cloudevents;
pub use mailroom_core::*;
#[cfg(feature = "kafka")]
pub use mailroom_kafka as kafka;
pub use mailroom_memory as memory;
#[cfg(feature = "processors")]
pub use mailroom_processors as processors;
#[cfg(feature = "rabbitmq")]
pub use mailroom_rabbitmq as rabbitmq;
#[cfg(feature = "sqs")]
pub use mailroom_sqs as sqs;

/// Every backend compiled into this build, by URL scheme.
pub fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::new().with(mailroom_memory::MemoryFactory);
    #[cfg(feature = "rabbitmq")]
    {
        registry = registry.with(mailroom_rabbitmq::RabbitFactory);
    }
    #[cfg(feature = "sqs")]
    {
        registry = registry.with(mailroom_sqs::SqsFactory);
    }
    #[cfg(feature = "kafka")]
    {
        registry = registry.with(mailroom_kafka::KafkaFactory);
    }
    registry
}

/// Open the backend a URL names: `memory://`, and with their features `amqp://`, `kafka://`,
/// `sqs://`. An unknown scheme or a malformed URL is a `Config` error listing what is available.
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    registry().connect(url).await
}
