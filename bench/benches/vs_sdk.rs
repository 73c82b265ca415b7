//! mailroom's SQS producer against raw aws-sdk-sqs on the same server, in one process:
//! 1 KiB messages, (a) raw `SendMessage` one at a time, (b) raw `SendMessageBatch` of 10 with the
//! same number of calls in flight as mailroom uses, (c) mailroom `enqueue` pipelined.
//!
//! `cargo bench -p mailroom-sqs --bench vs_sdk` (server from `scripts/brokers.sh up sqs`;
//! `MAILROOM_SQS_URL`, `MAILROOM_BENCH_N` to change the target and size).

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use mailroom_core::{Backend, Destination, Message, QueueSpec};
use mailroom_sqs::{SqsBackend, DEFAULT_URL};
use tokio::sync::Semaphore;

const PAYLOAD: usize = 1024;

async fn fresh_queue(b: &SqsBackend, what: &str) -> (String, String) {
    let q = format!(
        "mr-bench-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    b.topology()
        .declare_queue(&QueueSpec::new(&q))
        .await
        .unwrap();
    let url = b
        .client()
        .get_queue_url()
        .queue_name(&q)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    (q, url)
}

fn rate(n: usize, secs: f64) -> f64 {
    n as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let n: usize = std::env::var("MAILROOM_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let b = SqsBackend::from_url(&url).await.unwrap();
    let client = b.client().clone();
    let concurrency = b.config().send_concurrency;
    let body = "x".repeat(PAYLOAD);

    // (a) one SendMessage per message, awaited one by one: what a naive loop does.
    let single_n = (n / 10).max(500);
    let (qa, url_a) = fresh_queue(&b, "single").await;
    let start = Instant::now();
    for _ in 0..single_n {
        client
            .send_message()
            .queue_url(&url_a)
            .message_body(&body)
            .send()
            .await
            .unwrap();
    }
    let single = rate(single_n, start.elapsed().as_secs_f64());

    // (b) raw SendMessageBatch of 10, `concurrency` calls in flight.
    let (qb, url_b) = fresh_queue(&b, "batch").await;
    let calls = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..n.div_ceil(10) {
        let permit = calls.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        let url_b = url_b.clone();
        let body = body.clone();
        let size = (n - chunk * 10).min(10);
        tasks.push(tokio::spawn(async move {
            let entries = (0..size)
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body.clone())
                        .build()
                        .unwrap()
                })
                .collect();
            let out = client
                .send_message_batch()
                .queue_url(url_b)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert!(out.failed().is_empty());
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let batch = rate(n, start.elapsed().as_secs_f64());

    // (c) mailroom: enqueue everything pipelined, then await every confirm.
    let (qc, _) = fresh_queue(&b, "mailroom").await;
    let producer = b.producer().await.unwrap();
    let dest = Destination::queue(&qc);
    let messages: Vec<Message> = (0..n).map(|_| Message::new(body.clone())).collect();
    let start = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for m in messages {
        pending.push(producer.enqueue(&dest, m).await.unwrap());
    }
    for p in pending {
        p.await.unwrap();
    }
    let mailroom = rate(n, start.elapsed().as_secs_f64());

    println!("SQS send, {PAYLOAD} B messages, {url}");
    println!("  raw SendMessage one by one  {single:>9.0} msg/s  ({single_n} messages)");
    println!("  raw SendMessageBatch x10    {batch:>9.0} msg/s  ({n} messages, {concurrency} calls in flight)");
    println!("  mailroom enqueue            {mailroom:>9.0} msg/s  ({n} messages)");
    println!(
        "  ratio mailroom / one-by-one {:.2}x (target >= 5x)",
        mailroom / single
    );
    println!(
        "  ratio mailroom / raw batch  {:.2}x (target >= 0.9x)",
        mailroom / batch
    );
    for q in [qa, qb, qc] {
        let _ = b.topology().delete_queue(&q).await;
    }
}
