//! mailroom-sqs vs raw aws-sdk-sqs on the same server, in one process, closed loop: 1 KiB
//! messages sent with every confirm awaited (raw: `SendMessageBatch` of up to 10 with the
//! backend's calls in flight), then received and deleted. Both sides are the harness's drivers,
//! the raw one being `mailroom_bench::raw_sqs` (see `mailroom_bench::versus`). One more line:
//! `SendMessage` one message at a time, what a naive loop does, against mailroom's send rate.
//!
//! `cargo bench -p mailroom-bench --features sqs --bench vs_sdk` (server from
//! `scripts/brokers.sh up sqs`; env `MAILROOM_SQS_URL`; `MAILROOM_BENCH_N`, default 10,000;
//! `MAILROOM_BENCH_ROUNDS`, default 4).

use std::time::Instant;

use mailroom::{Backend, QueueSpec};
use mailroom_bench::versus;
use mailroom_sqs::{SqsBackend, DEFAULT_URL};

const SIZE: usize = 1024;

/// `SendMessage` calls awaited one by one: msgs/s over `n` messages.
async fn one_by_one(url: &str, n: usize) -> mailroom::Result<f64> {
    let backend = SqsBackend::from_url(url).await?;
    let queue = format!("mr-bench-single-{}", mailroom::MessageId::generate())
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "");
    backend
        .topology()
        .declare_queue(&QueueSpec::new(&queue))
        .await?;
    let failed = |e: String| mailroom::Error::new(mailroom::ErrorKind::Broker, e);
    let client = backend.client().clone();
    let queue_url = client
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .map_err(|e| failed(format!("GetQueueUrl: {e}")))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let body = "x".repeat(SIZE);
    let start = Instant::now();
    for _ in 0..n {
        client
            .send_message()
            .queue_url(&queue_url)
            .message_body(&body)
            .send()
            .await
            .map_err(|e| failed(format!("SendMessage: {e}")))?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = backend.topology().delete_queue(&queue).await;
    let _ = backend.close().await;
    Ok(rate)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> mailroom::Result<()> {
    let url = std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let (n, rounds) = versus::size_from_env(10_000, 4);
    let result = versus::compare(&url, n, SIZE, rounds).await?;
    let single_n = (n / 10).max(500);
    let single = one_by_one(&url, single_n).await?;
    println!("server {}", mailroom::url::redact(&url));
    for line in result.lines() {
        println!("{line}");
    }
    let mut sends: Vec<f64> = result.rounds.iter().map(|(_, m)| m.publish).collect();
    sends.sort_by(f64::total_cmp);
    let mailroom_send = sends[sends.len() / 2];
    println!(
        "  raw SendMessage one by one {single:>9.0} msg/s ({single_n} messages); mailroom send \
         {mailroom_send:.0} msg/s, ratio {:.2}x",
        mailroom_send / single
    );
    Ok(())
}
