//! Raw lapin on RabbitMQ: what the RabbitMQ backend does, without mailroom. One connection made
//! from the backend's own URI; per producer a channel in confirm mode with the backend's window
//! of unconfirmed messages (`confirm_window`), `mandatory` and persistent delivery as configured;
//! per consumer a channel with the backend's prefetch, `basic.consume` and a manual ack each.
//! The intended send time travels as an integer header.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

use mailroom_core::{Destination, Error, ErrorKind, Result};
use mailroom_rabbitmq::{RabbitBackend, RabbitConfig};

use super::driver::{
    Confirm, DriverConsumer, DriverProducer, Incoming, MailroomDriver, Outgoing, TopicPlan,
    SENT_AT_HEADER,
};
use super::raw::{RawClient, RawDriver};

fn failed(what: &str, e: lapin::Error) -> Error {
    Error::new(ErrorKind::Broker, format!("raw lapin: {what} failed: {e}")).with_source(e)
}

/// Open the raw lapin baseline for an `amqp://` / `amqps://` URL.
pub async fn connect(url: &str) -> Result<RawDriver<RawLapin>> {
    let backend = RabbitBackend::from_url(url).await?;
    let config = backend.config().clone();
    let tls = match &config.ca_file {
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(|e| {
                Error::config(format!("cannot read ca_file {}: {e}", path.display()))
            })?),
        },
        None => OwnedTLSConfig::default(),
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| failed("runtime", e))?;
    let properties =
        ConnectionProperties::default().with_connection_name("mailroom-bench-raw".into());
    let attempt = Connection::connect_uri_with_config(config.amqp_uri(), properties, tls, runtime);
    let connection =
        tokio::time::timeout(Duration::from_millis(config.connect_timeout_ms), attempt)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Connection,
                    format!(
                        "raw lapin: could not connect to {} within {} ms",
                        config.display_target(),
                        config.connect_timeout_ms
                    ),
                )
            })?
            .map_err(|e| failed(&format!("connect to {}", config.display_target()), e))?;
    Ok(RawDriver::new(
        MailroomDriver::new(Arc::new(backend)),
        RawLapin { connection, config },
    ))
}

/// Raw lapin producers and consumers on one connection.
pub struct RawLapin {
    connection: Connection,
    config: RabbitConfig,
}

impl RawLapin {
    async fn channel(&self) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| failed("open channel", e))
    }
}

#[async_trait]
impl RawClient for RawLapin {
    fn name(&self) -> String {
        "raw-lapin".to_owned()
    }

    fn library(&self) -> String {
        "lapin 4".to_owned()
    }

    async fn producer(&self, destination: &Destination) -> Result<Box<dyn DriverProducer>> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| failed("confirm.select", e))?;
        let (exchange, routing_key) = match destination {
            Destination::Queue(q) => (ShortString::from(""), ShortString::from(&**q)),
            Destination::Exchange { name, routing_key } => (
                ShortString::from(&**name),
                ShortString::from(&**routing_key),
            ),
        };
        Ok(Box::new(LapinProducer {
            channel,
            exchange,
            routing_key,
            window: Arc::new(Semaphore::new(self.config.confirm_window.max(1))),
            options: BasicPublishOptions {
                mandatory: self.config.mandatory,
                immediate: false,
            },
            persistent: self.config.persistent,
        }))
    }

    async fn consumer(
        &self,
        _topic: &TopicPlan,
        subscription: &str,
    ) -> Result<Box<dyn DriverConsumer>> {
        let channel = self.channel().await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| failed("basic.qos", e))?;
        let consumer = channel
            .basic_consume(
                subscription.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed(&format!("basic.consume on '{subscription}'"), e))?;
        Ok(Box::new(LapinConsumer { channel, consumer }))
    }
}

struct LapinProducer {
    channel: Channel,
    exchange: ShortString,
    routing_key: ShortString,
    window: Arc<Semaphore>,
    options: BasicPublishOptions,
    persistent: bool,
}

#[async_trait]
impl DriverProducer for LapinProducer {
    async fn send(&self, message: Outgoing) -> Result<Confirm> {
        // The window bounds unconfirmed messages, as the backend's confirm_window does: a slot
        // is taken before publishing and given back by the confirm.
        let slot = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::closed("raw lapin producer closed"))?;
        let mut headers = FieldTable::default();
        headers.insert(
            SENT_AT_HEADER.into(),
            AMQPValue::LongLongInt(message.intended_us.min(i64::MAX as u64) as i64),
        );
        let mut properties = BasicProperties::default().with_headers(headers);
        if self.persistent {
            properties = properties.with_delivery_mode(2);
        }
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.clone(),
                self.routing_key.clone(),
                self.options,
                &message.payload,
                properties,
            )
            .await
            .map_err(|e| failed("basic.publish", e))?;
        Ok(async move {
            let outcome = confirm.await;
            drop(slot);
            match outcome.map_err(|e| failed("publisher confirm", e))? {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(Error::new(
                    ErrorKind::Unroutable,
                    "raw lapin: the broker returned a mandatory message no queue took",
                )),
                Confirmation::Nack(_) => Err(Error::new(
                    ErrorKind::Rejected,
                    "raw lapin: the broker nacked a message",
                )),
            }
        }
        .boxed())
    }

    async fn close(&self) -> Result<()> {
        self.channel
            .close(200, "OK".into())
            .await
            .map_err(|e| failed("channel.close", e))
    }
}

struct LapinConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
}

fn intended_us(delivery: &Delivery) -> Option<u64> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(SENT_AT_HEADER)?
    {
        AMQPValue::LongLongInt(us) => u64::try_from(*us).ok(),
        _ => None,
    }
}

#[async_trait]
impl DriverConsumer for LapinConsumer {
    async fn receive(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        let delivery = match tokio::time::timeout(timeout, self.consumer.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(Error::closed("raw lapin: the consumer was cancelled")),
            Ok(Some(delivery)) => delivery.map_err(|e| failed("delivery", e))?,
        };
        let incoming = Incoming {
            intended_us: intended_us(&delivery),
            bytes: delivery.data.len(),
        };
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| failed("basic.ack", e))?;
        Ok(Some(incoming))
    }

    async fn close(&mut self) -> Result<()> {
        self.channel
            .close(200, "OK".into())
            .await
            .map_err(|e| failed("channel.close", e))
    }
}
