//! Paired saturation on live runs: memory:// and its raw mpsc baseline, closed-loop steps of
//! each in turn, within a time budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_bench::driver::{Driver, MailroomDriver};
use mailroom_bench::raw::baseline_for;
use mailroom_bench::result::MaxRate;
use mailroom_bench::runner::paired_max_rate;
use mailroom_bench::workload::load_plan;

mod common;
use common::{tmp, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_saturation_gives_both_rates_and_a_pair_ratio() {
    let dir = tmp();
    let plan = load_plan(&workload(&dir, 0, 2_000)).unwrap();
    let backend: Arc<dyn Driver> = Arc::new(MailroomDriver::new(
        mailroom::connect("memory://").await.unwrap(),
    ));
    let raw = baseline_for("memory://").await.unwrap().expect("raw mpsc");
    let budget = Duration::from_secs(90);
    let took = Instant::now();
    let paired = paired_max_rate(backend, raw, &plan, 1, budget, false)
        .await
        .unwrap();
    // One warm-up pair and one counted pair: eight 1-second steps and their drains.
    assert!(
        took.elapsed() < Duration::from_secs(30),
        "{:?}",
        took.elapsed()
    );
    assert_eq!((paired.a.len(), paired.b.len()), (1, 1), "{paired:?}");
    // Closed loop: far above the workload's start rate (2,000 msgs/s) on an in-process broker.
    let found = |m: &MaxRate| matches!(m, MaxRate::Found { rate } if *rate >= 20_000.0);
    assert!(found(&paired.a[0]) && found(&paired.b[0]), "{paired:?}");
    let ratio = paired.ratio().expect("a ratio");
    assert_eq!(
        paired.ratios,
        vec![ratio],
        "one pair: its ratio is the ratio"
    );
}
