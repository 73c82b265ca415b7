//! The paired max-rate search on live runs: memory:// and its raw mpsc baseline searched at
//! once, step by step in turn, within a time budget.

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
async fn a_paired_search_gives_both_rates_and_a_round_ratio() {
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
    // A step that has begun is finished: the budget is overrun by at most a step and a drain.
    assert!(took.elapsed() < budget + Duration::from_secs(10));
    assert_eq!((paired.a.len(), paired.b.len()), (1, 1), "{paired:?}");
    let found = |m: &MaxRate| matches!(m, MaxRate::Found { rate } if *rate >= 2_000.0);
    assert!(found(&paired.a[0]) && found(&paired.b[0]), "{paired:?}");
    let ratio = paired.ratio().expect("a ratio");
    assert_eq!(
        paired.ratios,
        vec![ratio],
        "one round: its ratio is the ratio"
    );
}
