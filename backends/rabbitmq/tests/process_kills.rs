//! The testkit's process-kill scenario on RabbitMQ: consumer processes SIGKILLed mid-batch
//! three times (the broker requeues what the dead connection held unacked, at once), and a
//! producer process SIGKILLed with confirms outstanding. Runs without the libtest harness: the
//! child processes are this binary run again (see `mailroom_testkit::process_kills`).

use std::process::ExitCode;
use std::sync::Arc;

use mailroom_core::Backend;
use mailroom_rabbitmq::RabbitBackend;
use mailroom_testkit::process_kills::{self, Connect, ProcessKillScenario};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn main() -> ExitCode {
    let connect: Connect = Arc::new(|url: String| {
        Box::pin(
            async move { Ok(Arc::new(RabbitBackend::from_url(&url).await?) as Arc<dyn Backend>) },
        )
    });
    process_kills::main(connect, |c| ProcessKillScenario::new(URL, c))
}
