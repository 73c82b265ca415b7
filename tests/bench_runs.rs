//! The bench moves every message and reports sane figures (no speed is asserted here; speed is
//! what `mailroom bench` prints).

use std::time::Duration;

use mailroom::bench::{self, BenchConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_moves_every_message_on_memory_and_on_raw_mpsc() {
    let config = BenchConfig {
        messages: 20_000,
        latency_rate: 5_000,
        latency_duration: Duration::from_millis(400),
        ..BenchConfig::default()
    };
    let backend = mailroom::connect("memory://").await.unwrap();
    let t = bench::throughput(backend.clone(), &config).await.unwrap();
    assert_eq!(t.messages, 20_000);
    assert!(t.rate() > 0.0);
    let l = bench::latency(backend, &config).await.unwrap();
    assert_eq!(l.count, 2_000);
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us);
    let raw = bench::throughput_raw_mpsc(&config).await;
    assert_eq!(raw.messages, 20_000);
}
