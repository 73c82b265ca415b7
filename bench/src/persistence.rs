//! Persistence shown, not declared: `compare --restart-brokers` runs the testkit's broker-restart
//! scenario on each local broker that declares persistence, with the same restart hook as the
//! backends' fault tests, and the report's persistence row cites the run.

use std::sync::Arc;
use std::time::Duration;

use mailroom_testkit::{LocalRestart, RestartReport, RestartScenario};

/// Messages sent across the two restarts: enough that both restarts land mid-run (the scenario
/// sends 1,000 per second), small enough to keep `compare` short.
const MESSAGES: usize = 5_000;
/// A killed Kafka comes back through the script and its consumer group settles again, which
/// takes longer than a RabbitMQ application restart; the bounds cover the slower one.
const RECOVERY_BOUND: Duration = Duration::from_secs(180);
const RUN_BOUND: Duration = Duration::from_secs(480);

/// One broker-restart run, as the report shows it.
#[derive(Debug, Clone)]
pub struct PersistenceCheck {
    /// How the broker was stopped and started.
    pub method: &'static str,
    /// What the scenario saw, or why it could not be carried out.
    pub outcome: std::result::Result<RestartReport, String>,
}

impl PersistenceCheck {
    /// Both restarts happened, no hook failed, every message sent arrived and no failed send
    /// kept its message.
    pub fn passed(&self) -> bool {
        self.outcome.as_ref().is_ok_and(|r| {
            r.hook_errors.is_empty() && r.restarts_done == 2 && r.lost == 0 && r.unreturned == 0
        })
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        match &self.outcome {
            Ok(r) => {
                let recoveries: Vec<String> = r
                    .recoveries
                    .iter()
                    .map(|d| format!("{:.1} s", d.as_secs_f64()))
                    .collect();
                let problems = if r.hook_errors.is_empty() {
                    String::new()
                } else {
                    format!("; restart errors: {}", r.hook_errors.join("; "))
                };
                format!(
                    "{} messages across {} restarts ({}): {} lost, {} duplicates, {} re-sent, \
                     recovered in {}{problems}",
                    r.messages,
                    r.restarts_done,
                    self.method,
                    r.lost,
                    r.duplicates,
                    r.resent,
                    if recoveries.is_empty() {
                        "-".to_owned()
                    } else {
                        recoveries.join(" and ")
                    }
                )
            }
            Err(e) => format!("the restart scenario could not run ({}): {e}", self.method),
        }
    }
}

/// Run the restart scenario against the local broker `broker` (its name in
/// `scripts/brokers.sh`) at `url`; `None` when that broker has no local restart hook.
pub async fn check(url: &str, broker: &str) -> Option<PersistenceCheck> {
    let hook = LocalRestart::for_broker(broker)?;
    let outcome = match mailroom::connect(url).await {
        Ok(backend) => RestartScenario::new(MESSAGES)
            .recovery_bound(RECOVERY_BOUND)
            .run_bound(RUN_BOUND)
            .run(backend, Arc::new(hook))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot connect: {e}")),
    };
    Some(PersistenceCheck {
        method: hook.describe(),
        outcome,
    })
}
