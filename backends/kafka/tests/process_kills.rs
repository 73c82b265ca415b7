//! The testkit's process-kill scenario on Kafka: consumer processes SIGKILLed mid-batch three
//! times, and a producer process SIGKILLed with confirms outstanding. Runs without the libtest
//! harness: the child processes are this binary run again (see
//! `mailroom_testkit::process_kills`).
//!
//! A killed member cannot leave its group, which would wait out the 10 s session timeout
//! before giving its partitions to the next process. Every consumer process here joins with the
//! same `group.instance.id` (static membership), so the next one takes the dead one's place at
//! once, from the last committed offset.

use std::process::ExitCode;
use std::sync::Arc;

use mailroom_core::Backend;
use mailroom_kafka::KafkaBackend;
use mailroom_testkit::process_kills::{self, Connect, ProcessKillScenario};

fn main() -> ExitCode {
    // Inherited by the children through the URL, so they share the instance id; fresh per run.
    let url = std::env::var("MAILROOM_KILL_URL").unwrap_or_else(|_| {
        format!(
            "kafka://127.0.0.1:9092?group.instance.id=mr-kill-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    });
    let connect: Connect = Arc::new(|url: String| {
        Box::pin(
            async move { Ok(Arc::new(KafkaBackend::from_url(&url).await?) as Arc<dyn Backend>) },
        )
    });
    process_kills::main(connect, |c| ProcessKillScenario::new(&url, c))
}
