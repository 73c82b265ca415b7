//! CloudEvents interop on a real Kafka broker, both ways, against the SDK's Kafka binding.
//!
//! The SDK's own binding (`cloudevents-sdk` feature `rdkafka`) cannot be linked here: it is
//! written against rdkafka 0.38 (the workspace uses 0.39, so its record types are not ours) and
//! turns on rdkafka-sys's `cmake-build` and `libz` features, which would rebuild librdkafka
//! for every test build of the workspace. So the SDK side below is the SDK's binding shape over
//! plain rdkafka 0.39: the SDK's own `BinaryDeserializer for Event` / `EventBinarySerializer`
//! (reached through `into_event`) do the event work, and [`SdkRecord`] / [`SdkConsumerRecord`]
//! only place and read the headers exactly as the SDK's `MessageRecord` and
//! `ConsumerRecordDeserializer` do (`ce_` + attribute name, `datacontenttype` as
//! `content-type`, structured mode when `content-type` starts `application/cloudevents+json`).
//! Nothing on that side calls mailroom. `cloudevents/sdk-binding-check/` (outside the workspace,
//! run by hand) does the same both ways with the SDK's real rdkafka binding; it passed on
//! 2026-12-06 against Kafka 4.1.1.
//!
//! Needs Kafka on loopback (`scripts/brokers.sh up kafka`; `MAILROOM_KAFKA_URL` overrides).

use std::collections::BTreeMap;
use std::time::Duration;

use mailroom::cloudevents::cloudevents::event::{Data, SpecVersion};
use mailroom::cloudevents::cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, MessageAttributeValue, MessageDeserializer,
    Result as SdkResult, StructuredDeserializer, StructuredSerializer,
};
use mailroom::cloudevents::cloudevents::{EventBuilder, EventBuilderV10};
use mailroom::cloudevents::{Binding, Event, EventCodec};
use mailroom::{Backend, Destination, MessageId, QueueSpec};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};

const WAIT: Duration = Duration::from_secs(30);

fn url() -> String {
    std::env::var("MAILROOM_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

fn bootstrap() -> String {
    url()
        .trim_start_matches("kafka://")
        .split('?')
        .next()
        .unwrap_or("127.0.0.1:9092")
        .to_owned()
}

/// What the SDK's Kafka binding puts on a record: headers and a value.
#[derive(Default)]
struct SdkRecord {
    headers: Vec<(String, String)>,
    payload: Option<Vec<u8>>,
}

impl SdkRecord {
    fn header_name(attribute: &str) -> String {
        if attribute == "datacontenttype" {
            "content-type".to_owned()
        } else {
            format!("ce_{attribute}")
        }
    }

    fn owned_headers(&self) -> OwnedHeaders {
        self.headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            })
    }
}

impl BinarySerializer<SdkRecord> for SdkRecord {
    fn set_spec_version(mut self, version: SpecVersion) -> SdkResult<Self> {
        self.headers
            .push(("ce_specversion".to_owned(), version.to_string()));
        Ok(self)
    }

    fn set_attribute(mut self, name: &str, value: MessageAttributeValue) -> SdkResult<Self> {
        self.headers
            .push((Self::header_name(name), value.to_string()));
        Ok(self)
    }

    fn set_extension(self, name: &str, value: MessageAttributeValue) -> SdkResult<Self> {
        self.set_attribute(name, value)
    }

    fn end_with_data(mut self, bytes: Vec<u8>) -> SdkResult<SdkRecord> {
        self.payload = Some(bytes);
        Ok(self)
    }

    fn end(self) -> SdkResult<SdkRecord> {
        Ok(self)
    }
}

impl StructuredSerializer<SdkRecord> for SdkRecord {
    fn set_structured_event(mut self, bytes: Vec<u8>) -> SdkResult<SdkRecord> {
        self.headers.push((
            "content-type".to_owned(),
            "application/cloudevents+json".to_owned(),
        ));
        self.payload = Some(bytes);
        Ok(self)
    }
}

/// A received record as the SDK's Kafka binding reads it.
struct SdkConsumerRecord {
    headers: BTreeMap<String, Vec<u8>>,
    payload: Option<Vec<u8>>,
}

impl SdkConsumerRecord {
    fn new(record: &impl rdkafka::Message) -> Self {
        SdkConsumerRecord {
            headers: record
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            payload: record.payload().map(<[u8]>::to_vec),
        }
    }

    fn text(bytes: Vec<u8>) -> MessageAttributeValue {
        MessageAttributeValue::String(String::from_utf8(bytes).unwrap())
    }
}

impl BinaryDeserializer for SdkConsumerRecord {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        mut self,
        mut visitor: V,
    ) -> SdkResult<R> {
        let version = self.headers.remove("ce_specversion").unwrap();
        let version = SpecVersion::try_from(std::str::from_utf8(&version).unwrap())?;
        let names = version.attribute_names();
        visitor = visitor.set_spec_version(version)?;
        if let Some(ct) = self.headers.remove("content-type") {
            visitor = visitor.set_attribute("datacontenttype", Self::text(ct))?;
        }
        for (key, value) in self.headers {
            let Some(name) = key.strip_prefix("ce_") else {
                continue;
            };
            visitor = if names.contains(&name) {
                visitor.set_attribute(name, Self::text(value))?
            } else {
                visitor.set_extension(name, Self::text(value))?
            };
        }
        match self.payload {
            Some(p) => visitor.end_with_data(p),
            None => visitor.end(),
        }
    }
}

impl StructuredDeserializer for SdkConsumerRecord {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(
        self,
        visitor: V,
    ) -> SdkResult<R> {
        visitor.set_structured_event(self.payload.unwrap_or_default())
    }
}

impl MessageDeserializer for SdkConsumerRecord {
    fn encoding(&self) -> Encoding {
        let structured = self
            .headers
            .get("content-type")
            .is_some_and(|ct| ct.starts_with(b"application/cloudevents+json"));
        if structured {
            Encoding::STRUCTURED
        } else if self.headers.contains_key("ce_specversion") {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

/// What binary mode carries exactly: binary data, string extensions, every attribute.
fn event(id: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("https://shop.example.com/orders")
        .ty("com.example.order.placed")
        .subject("order-42")
        .time("2024-05-01T10:00:00.250Z")
        .data_with_schema(
            "application/vnd.example.order+bin",
            "https://example.com/schemas/order",
            Data::Binary(vec![1, 2, 0, 255]),
        )
        .extension("tenant", "acme")
        .build()
        .unwrap()
}

async fn fresh_topic(broker: &dyn Backend) -> String {
    let topic = format!("ce-interop-{}", MessageId::generate());
    broker
        .topology()
        .declare_queue(&QueueSpec::new(&topic))
        .await
        .unwrap();
    topic
}

#[test]
fn mailroom_writes_the_headers_the_sdk_binding_writes() {
    let sdk = BinaryDeserializer::deserialize_binary(event("e-0"), SdkRecord::default()).unwrap();
    let mailroom = EventCodec::binary(Binding::Kafka)
        .encode(event("e-0"))
        .unwrap();
    let mut sdk_headers = sdk.headers.clone();
    sdk_headers.sort();
    let mut ours: Vec<(String, String)> = mailroom
        .headers()
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    ours.sort();
    assert_eq!(ours, sdk_headers);
    assert_eq!(Some(mailroom.payload().to_vec()), sdk.payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_sdk_binding_wrote_is_read_by_mailroom() {
    let broker = mailroom::connect(&url()).await.unwrap();
    let topic = fresh_topic(broker.as_ref()).await;
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let binary = event("sdk-binary");
    let structured = event("sdk-structured");
    let records = [
        BinaryDeserializer::deserialize_binary(binary.clone(), SdkRecord::default()).unwrap(),
        StructuredDeserializer::deserialize_structured(structured.clone(), SdkRecord::default())
            .unwrap(),
    ];
    for record in &records {
        let payload = record.payload.clone().unwrap_or_default();
        plain
            .send(
                FutureRecord::to(&topic)
                    .key("order-42")
                    .payload(&payload)
                    .headers(record.owned_headers()),
                WAIT,
            )
            .await
            .unwrap();
    }

    let mut consumer = broker.consumer(&topic, Default::default()).await.unwrap();
    let codec = EventCodec::binary(Binding::Kafka);
    for expected in [binary, structured] {
        let delivery = consumer
            .receive_timeout(WAIT)
            .await
            .unwrap()
            .expect("mailroom received nothing");
        let message = delivery.message().clone();
        delivery.ack().await.unwrap();
        assert_eq!(message.key(), Some("order-42"));
        assert_eq!(codec.decode(&message).unwrap(), expected);
    }
    broker.topology().delete_queue(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_mailroom_wrote_is_read_by_the_sdk_binding() {
    let broker = mailroom::connect(&url()).await.unwrap();
    let topic = fresh_topic(broker.as_ref()).await;
    let producer = broker.producer().await.unwrap();
    let binary = event("mailroom-binary");
    let structured = event("mailroom-structured");
    let messages = [
        EventCodec::binary(Binding::Kafka)
            .encode_with_key(binary.clone(), "order-42")
            .unwrap(),
        EventCodec::structured(Binding::Kafka)
            .encode_with_key(structured.clone(), "order-42")
            .unwrap(),
    ];
    for message in messages {
        producer
            .send(&Destination::queue(&topic), message)
            .await
            .unwrap();
    }

    let plain: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("ce-sdk-{}", MessageId::generate()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    plain.subscribe(&[&topic]).unwrap();
    for expected in [binary, structured] {
        let record = tokio::time::timeout(WAIT, plain.recv())
            .await
            .expect("the plain consumer received nothing")
            .unwrap();
        assert_eq!(record.key(), Some(&b"order-42"[..]));
        let read = MessageDeserializer::into_event(SdkConsumerRecord::new(&record)).unwrap();
        assert_eq!(read, expected);
    }
    drop(plain);
    broker.topology().delete_queue(&topic).await.ok();
}
