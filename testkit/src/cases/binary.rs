//! Binary safety: 1,000 random messages (payloads with NULs and invalid UTF-8, odd header names
//! and values, keys, ids, timestamps) round-trip exactly. The seed is in the note and in any
//! failure, so a failing run can be reproduced.

use std::collections::HashMap;

use mailroom_core::{ConsumerOptions, Destination, Message, Result, Timestamp};

use super::{cleanup, fresh_queue, WAIT};
use crate::{check_failed, ensure, Fixture};

const MESSAGES: u64 = 1000;

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

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
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

fn random_messages(seed: u64, now_ms: u64) -> Result<Vec<Message>> {
    let mut rng = XorShift(seed);
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let len = match i % 10 {
            0 => 0,
            1 => 1,
            _ => rng.below(3000) as usize,
        };
        let payload: Vec<u8> = match i % 4 {
            // Valid text any broker can carry as it is.
            0 => (0..len).map(|_| b'a' + rng.below(26) as u8).collect(),
            // NULs and invalid UTF-8 guaranteed.
            1 => {
                let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                p.extend_from_slice(&[0, 0xff, 0xc0, 0x80]);
                p
            }
            // Valid UTF-8 with characters a text-only wire (SQS) refuses in a body.
            2 => rng.pick(ODD_VALUES).repeat(1 + len / 16).into_bytes(),
            _ => (0..len).map(|_| rng.next() as u8).collect(),
        };
        let mut b = Message::builder(payload);
        for h in 0..rng.below(16) {
            let name = format!("{}-{h}", rng.pick(ODD_NAMES));
            b = b.header(name, rng.pick(ODD_VALUES));
        }
        if i % 3 == 0 {
            b = b.key(format!("key \u{e9} {}", rng.below(10)));
        }
        // Any past millisecond: Apache Kafka 4 refuses a record stamped more than an hour ahead
        // (log.message.timestamp.after.max.ms), a broker's setting, not the client's.
        if i % 2 == 0 {
            b = b.timestamp(Timestamp::from_millis(rng.below(now_ms)));
        }
        if i % 7 == 0 {
            b = b.id(format!("custom id {i} \u{2713}"));
        }
        sent.push(b.build()?);
    }
    Ok(sent)
}

pub(super) async fn binary_round_trip_1000_random(fixture: Fixture) -> Result<String> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = since_epoch.as_nanos() as u64 | 1;
    let in_seed = |e: mailroom_core::Error| check_failed(format!("seed {seed}: {e}"));
    let sent = random_messages(seed, (since_epoch.as_millis() as u64).max(1))?;
    let q = fresh_queue(&fixture, "q").await?;
    let producer = fixture.backend.producer().await?;
    let results = producer
        .send_batch(&Destination::queue(&q), sent.clone())
        .await
        .map_err(in_seed)?;
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            return Err(check_failed(format!(
                "seed {seed}: message {i} failed: {e}"
            )));
        }
    }
    let mut want: HashMap<_, Message> = sent.into_iter().map(|m| (m.id().clone(), m)).collect();
    let mut c = fixture
        .backend
        .consumer(&q, ConsumerOptions::default().prefetch(50))
        .await?;
    while !want.is_empty() {
        let Some(d) = c.receive_timeout(WAIT * 2).await.map_err(in_seed)? else {
            return Err(check_failed(format!(
                "seed {seed}: stalled with {} messages missing",
                want.len()
            )));
        };
        let got = d.message().clone();
        d.ack().await.map_err(in_seed)?;
        let Some(expected) = want.remove(got.id()) else {
            continue; // a redelivery of one already checked
        };
        ensure(got.payload() == expected.payload(), || {
            format!("seed {seed}: payload of {} differs", got.id())
        })?;
        ensure(got.headers() == expected.headers(), || {
            format!(
                "seed {seed}: headers of {}: {:?} != sent {:?}",
                got.id(),
                got.headers(),
                expected.headers()
            )
        })?;
        ensure(got == expected, || {
            format!("seed {seed}: received {got:?}, sent {expected:?}")
        })?;
    }
    c.close().await?;
    cleanup(&fixture, &[&q], &[]).await;
    Ok(format!("seed {seed}"))
}
