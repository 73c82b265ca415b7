//! What another SQS client writes reaches mailroom as it wrote it: `Binary` message attributes
//! arrive as bytes header values (not base64 text), and mailroom's own bytes values and binary
//! keys come back as they were sent, past the 10-attribute budget.

use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use bytes::Bytes;
use mailroom_core::{Backend, ConsumerOptions, Destination, HeaderValue, Message, QueueSpec};
use mailroom_sqs::{SqsBackend, DEFAULT_URL};

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn fresh(what: &str) -> String {
    format!(
        "mr-sqs-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_attributes_of_a_raw_sdk_message_arrive_as_bytes() {
    let b = SqsBackend::from_url(&url()).await.unwrap();
    let q = fresh("binary-attrs");
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let queue_url = tokio::time::timeout(WAIT, b.client().get_queue_url().queue_name(&q).send())
        .await
        .expect("get_queue_url timed out")
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let binary = MessageAttributeValue::builder()
        .data_type("Binary")
        .binary_value(Blob::new(vec![0u8, 0x9f, 0xff]))
        .build()
        .unwrap();
    let text = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("plain")
        .build()
        .unwrap();
    tokio::time::timeout(
        WAIT,
        b.client()
            .send_message()
            .queue_url(&queue_url)
            .message_body("from the raw SDK")
            .message_attributes("blob", binary)
            .message_attributes("note", text)
            .send(),
    )
    .await
    .expect("raw send timed out")
    .unwrap();

    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let d = c
        .receive_timeout(WAIT)
        .await
        .unwrap()
        .expect("nothing in 20 s");
    let values: Vec<(&str, &HeaderValue)> = d.message().headers().values().collect();
    assert_eq!(
        values,
        [
            (
                "blob",
                &HeaderValue::Bytes(Bytes::from_static(&[0, 0x9f, 0xff]))
            ),
            ("note", &HeaderValue::from("plain")),
        ]
    );
    d.ack().await.unwrap();

    // mailroom's own: more bytes values than attributes, a repeated name, a binary key.
    let p = b.producer().await.unwrap();
    let mut builder = Message::builder("x").key_bytes(b"\xfe\x00");
    for i in 0..12u8 {
        builder = builder.append_header(format!("h{i}"), vec![0xff, i]);
    }
    let sent = builder.append_header("h0", "text too").build().unwrap();
    p.send(&Destination::queue(&q), sent.clone()).await.unwrap();
    let d = c
        .receive_timeout(WAIT)
        .await
        .unwrap()
        .expect("nothing in 20 s");
    assert_eq!(d.message(), &sent);
    d.ack().await.unwrap();
    c.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
}
