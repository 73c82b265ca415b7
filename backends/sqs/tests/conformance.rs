//! The shared conformance suite against a real SQS-API server (fauxqs from scripts/brokers.sh).

use std::sync::Arc;

use mailroom_testkit::{local_broker, Conformance};
use mailroom_core::Backend;
use mailroom_sqs::{SqsBackend, DEFAULT_URL};

fn url() -> String {
    std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let report = Conformance::new(|| async {
        Ok(Arc::new(SqsBackend::from_url(&url()).await?) as Arc<dyn Backend>)
    })
    // The report names the server scripts/brokers.sh runs, unless the URL points elsewhere.
    .broker(
        std::env::var_os("MAILROOM_SQS_URL")
            .is_none()
            .then(|| local_broker("sqs"))
            .flatten(),
    )
    .run()
    .await;
    report.print();
    report.assert_passed();
}

/// A small deterministic generator, so a failure can be reproduced from the printed seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ODD_VALUES: &[&str] = &[
    "",
    " ",
    "\0",
    "a\0b",
    "tab\there",
    "line\nbreak\r\n",
    "\u{1}\u{1f}\u{7f}",
    "\u{fffe}\u{ffff}",
    "\u{d7ff}\u{e000}",
    "emoji \u{1f600}\u{1f680}",
    "<xml attr=\"v\">&amp;</xml>",
    "  leading and trailing  ",
    "{\"json\": [1, 2]}",
    "caf\u{e9} \u{65e5}\u{672c}",
];

const ODD_NAMES: &[&str] = &[
    "plain",
    "with space",
    "caf\u{e9}",
    "AWS.reserved",
    "mailroom.meta",
    "dots..twice",
    ".leading",
    "x-mailroom-dead-letter-reason",
    "UPPER_lower-123",
    "\u{1f600}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_safety_1000_random_payloads_round_trip_exactly() {
    use std::collections::HashMap;
    use std::time::Duration;

    use mailroom_core::{ConsumerOptions, Destination, Message, QueueSpec, Timestamp};

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("binary safety seed {seed}");
    let mut rng = XorShift(seed);
    let backend = SqsBackend::from_url(&url()).await.unwrap();
    let q = format!(
        "mr-binary-safety-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();

    let mut sent = Vec::new();
    for i in 0..1000u64 {
        let len = match i % 10 {
            0 => 0,
            1 => 1,
            _ => rng.below(3000) as usize,
        };
        let payload: Vec<u8> = match i % 4 {
            // Valid text SQS can carry as it is.
            0 => (0..len).map(|_| b'a' + rng.below(26) as u8).collect(),
            // NULs and invalid UTF-8 guaranteed.
            1 => {
                let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                p.extend_from_slice(&[0, 0xff, 0xc0, 0x80]);
                p
            }
            // Valid UTF-8 with characters SQS refuses in a body.
            2 => ODD_VALUES[rng.below(ODD_VALUES.len() as u64) as usize]
                .repeat(1 + len / 16)
                .into_bytes(),
            _ => (0..len).map(|_| rng.next() as u8).collect(),
        };
        let mut b = Message::builder(payload);
        let headers = rng.below(16);
        for h in 0..headers {
            let name = format!(
                "{}-{h}",
                ODD_NAMES[rng.below(ODD_NAMES.len() as u64) as usize]
            );
            let value = ODD_VALUES[rng.below(ODD_VALUES.len() as u64) as usize];
            b = b.header(name, value);
        }
        if i % 3 == 0 {
            b = b.key(format!("key \u{e9} {}", rng.below(10)));
        }
        if i % 2 == 0 {
            b = b.timestamp(Timestamp::from_millis(rng.below(1 << 45)));
        }
        if i % 7 == 0 {
            b = b.id(format!("custom id {i} \u{2713}"));
        }
        sent.push(b.build().unwrap());
    }
    let producer = backend.producer().await.unwrap();
    let results = producer
        .send_batch(&Destination::queue(&q), sent.clone())
        .await
        .unwrap();
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "message {i} failed: {r:?}");
    }

    let mut want: HashMap<_, Message> = sent.into_iter().map(|m| (m.id().clone(), m)).collect();
    let mut consumer = backend
        .consumer(&q, ConsumerOptions::default().prefetch(50))
        .await
        .unwrap();
    while !want.is_empty() {
        let d = consumer
            .receive_timeout(Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("stalled with {} messages missing", want.len()));
        let got = d.message().clone();
        d.ack().await.unwrap();
        let Some(expected) = want.remove(got.id()) else {
            continue; // a redelivery of one already checked
        };
        assert_eq!(got.payload(), expected.payload(), "payload of {}", got.id());
        assert_eq!(got.headers(), expected.headers(), "headers of {}", got.id());
        assert_eq!(got, expected);
    }
    consumer.close().await.unwrap();
    backend.topology().delete_queue(&q).await.unwrap();
}
