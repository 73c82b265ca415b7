//! The closed-loop comparison the `vs_*` benches print runs end to end: here on memory:// against
//! raw mpsc, which needs no broker (the benches run it on RabbitMQ, Kafka and SQS; scripts/test.sh
//! runs them small).

use mailroom_bench::driver::RAW_MPSC_CAPACITY;
use mailroom_bench::versus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_against_raw_mpsc_moves_every_message_and_reports_a_ratio() {
    // Everything is published before anything is consumed: the warm-up message and the round
    // must fit the raw channel.
    let n = RAW_MPSC_CAPACITY - 1;
    let result = versus::compare("memory://", n, 64, 2).await.unwrap();
    assert_eq!(result.raw, "raw-mpsc");
    assert_eq!(result.mailroom, "memory");
    assert_eq!(result.rounds.len(), 2);
    for (raw, mailroom) in &result.rounds {
        for rate in [raw.publish, raw.consume, mailroom.publish, mailroom.consume] {
            assert!(rate > 0.0 && rate.is_finite(), "{result:?}");
        }
    }
    let lines = result.lines();
    // A header, the publish, consume and first-message lines, and the two CPU lines where the
    // platform reports per-thread CPU time (Linux).
    let cpu = result.rounds.iter().all(|(raw, mailroom)| {
        [raw, mailroom]
            .iter()
            .all(|r| r.publish_cpu_us.is_some() && r.consume_cpu_us.is_some())
    });
    assert_eq!(lines.len(), if cpu { 6 } else { 4 }, "{lines:?}");
    assert!(
        lines[2].contains("consume+ack") && lines[3].contains("first message"),
        "{lines:?}"
    );
    if cpu {
        assert!(
            lines[4].contains("publish CPU") && lines[4].contains("us/msg"),
            "{lines:?}"
        );
    }
    assert!(
        lines[1].contains("publish+confirm") && lines[1].contains("ratio"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_url_without_a_raw_baseline_is_unsupported() {
    let e = versus::compare("nosuch://", 1, 1, 1).await.unwrap_err();
    assert_eq!(e.kind(), mailroom::ErrorKind::Unsupported, "{e}");
}

/// A round bigger than the producer's window of unconfirmed messages: the confirms must be
/// awaited while sending, or the raw client's send waits for a slot only a confirm gives back.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_larger_than_the_confirm_window_completes_on_rabbitmq() {
    let url = std::env::var("MAILROOM_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let url = format!(
        "{url}{}confirm_window=8&prefetch=8",
        if url.contains('?') { '&' } else { '?' }
    );
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        versus::compare(&url, 200, 64, 1),
    )
    .await
    .expect("a round of 200 with a window of 8 did not finish in 120 s: confirms not driven")
    .unwrap();
    assert_eq!(result.raw, "raw-lapin");
    assert_eq!(result.rounds.len(), 1);
}
