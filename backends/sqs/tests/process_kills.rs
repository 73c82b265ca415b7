//! The testkit's process-kill scenario on SQS (the shared fauxqs): consumer processes
//! SIGKILLed mid-batch three times (what they held comes back after the queue's 2 s
//! visibility timeout), and a producer process SIGKILLed with sends outstanding. Runs without
//! the libtest harness: the child processes are this binary run again (see
//! `mailroom_testkit::process_kills`).

use std::process::ExitCode;
use std::sync::Arc;

use mailroom_core::Backend;
use mailroom_sqs::{SqsBackend, DEFAULT_URL};
use mailroom_testkit::process_kills::{self, Connect, ProcessKillScenario};

fn main() -> ExitCode {
    let url = std::env::var("MAILROOM_SQS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let connect: Connect = Arc::new(|url: String| {
        Box::pin(async move { Ok(Arc::new(SqsBackend::from_url(&url).await?) as Arc<dyn Backend>) })
    });
    process_kills::main(connect, |c| {
        ProcessKillScenario::new(&url, c).queue_spec(|s| s.extra("VisibilityTimeout", "2"))
    })
}
