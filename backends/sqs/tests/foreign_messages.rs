//! Messages another SQS client sends that mailroom cannot decode as they are (mailroom's own
//! attributes with values it cannot read: a body marked base64 that is not, an unreadable
//! `mailroom.meta`; a binary attribute; a message id that is not a mailroom id): each is
//! delivered, never skipped, never a panic; an application that cannot use it dead-letters it
//! with the reason; the next message follows. Sent with the AWS SDK client itself.

use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use mailroom_core::delivery::DEAD_LETTER_REASON_HEADER;
use mailroom_core::{Backend, Consumer, ConsumerOptions, Delivery, Nack, QueueSpec};
use mailroom_sqs::{SqsBackend, DEFAULT_URL};

const WAIT: Duration = Duration::from_secs(30);

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn fresh(what: &str) -> String {
    format!(
        "mr-sqs-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn receive(c: &mut Box<dyn Consumer>, what: &str) -> Delivery {
    c.receive_timeout(WAIT)
        .await
        .unwrap_or_else(|e| panic!("receiving {what}: {e}"))
        .unwrap_or_else(|| panic!("{what} was not delivered within {WAIT:?}"))
}

fn string(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .unwrap()
}

fn binary(data_type: &str, v: &[u8]) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .binary_value(Blob::new(v))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_mailroom_cannot_decode_are_delivered_and_can_be_dead_lettered() {
    tokio::time::timeout(Duration::from_secs(120), run())
        .await
        .expect("the test did not finish within 120 s");
}

async fn run() {
    let b = SqsBackend::from_url(&url()).await.unwrap();
    let q = fresh("foreign");
    let dlq = format!("{q}-dlq");
    b.topology()
        .declare_queue(&QueueSpec::new(&dlq))
        .await
        .unwrap();
    b.topology()
        .declare_queue(&QueueSpec::new(&q).dead_letter_queue(&dlq))
        .await
        .unwrap();
    let client = b.client();
    let queue_url = client
        .get_queue_url()
        .queue_name(&q)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let sends = [
        (
            "not base64 !",
            vec![
                ("mailroom.encoding", string("base64")),
                ("bin", binary("Binary", b"\x00\xff")),
            ],
        ),
        (
            "meta unreadable",
            vec![("mailroom.meta", binary("Binary", b"{not json"))],
        ),
        ("next", vec![]),
    ];
    for (body, attributes) in sends {
        let mut send = client
            .send_message()
            .queue_url(&queue_url)
            .message_body(body);
        for (name, value) in attributes {
            send = send.message_attributes(name, value);
        }
        send.send().await.unwrap();
    }

    let mut c = b.consumer(&q, ConsumerOptions::default()).await.unwrap();
    let mut got = Vec::new();
    for what in [
        "the first foreign message",
        "the second",
        "the message after them",
    ] {
        let d = receive(&mut c, what).await;
        let body = String::from_utf8(d.message().payload().to_vec()).unwrap();
        if body == "next" {
            d.ack().await.unwrap();
        } else {
            d.nack(Nack::dead_letter(format!("cannot use: {body}")))
                .await
                .unwrap();
        }
        got.push(body);
    }
    got.sort();
    assert_eq!(got, ["meta unreadable", "next", "not base64 !"]);

    let mut dead = b.consumer(&dlq, ConsumerOptions::default()).await.unwrap();
    let mut reasons = Vec::new();
    for what in ["a dead-lettered message", "the other dead-lettered message"] {
        let d = receive(&mut dead, what).await;
        let reason = d.message().headers().get(DEAD_LETTER_REASON_HEADER);
        reasons.push(reason.unwrap_or("no reason header").to_owned());
        d.ack().await.unwrap();
    }
    reasons.sort();
    assert_eq!(
        reasons,
        ["cannot use: meta unreadable", "cannot use: not base64 !"]
    );
    c.close().await.unwrap();
    dead.close().await.unwrap();
    b.topology().delete_queue(&q).await.unwrap();
    b.topology().delete_queue(&dlq).await.unwrap();
}
