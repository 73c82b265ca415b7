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
    assert_eq!(lines.len(), 4, "{lines:?}");
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
