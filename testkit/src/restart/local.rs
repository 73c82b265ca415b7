//! Restart hooks for the brokers `scripts/brokers.sh` runs on this machine, shared by the
//! backends' fault tests and by `compare --restart-brokers`, so that "survives a restart" means
//! the same stop and start wherever it is shown.

use std::path::PathBuf;
use std::process::Command;

use super::hook::{RestartHook, Retention};
use crate::local_broker::brokers_script;

/// How a local broker is stopped and started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRestart {
    /// `rabbitmqctl stop_app` / `start_app`: RabbitMQ runs as a machine service that the
    /// script starts but cannot kill; stopping the application closes every connection and
    /// keeps durable queues and their persistent messages on disk.
    RabbitMq,
    /// `scripts/brokers.sh kill kafka` (SIGKILL, no clean shutdown) / `up kafka`: the harshest
    /// stop; the log on disk is all that survives.
    Kafka,
}

impl LocalRestart {
    /// The hook for a broker by its name in `scripts/brokers.sh` (`rabbitmq`, `kafka`), or
    /// `None` for a broker whose messages do not survive a restart there (the SQS server keeps
    /// them in memory) or that the script does not run.
    pub fn for_broker(broker: &str) -> Option<Self> {
        match broker {
            "rabbitmq" => Some(LocalRestart::RabbitMq),
            "kafka" => Some(LocalRestart::Kafka),
            _ => None,
        }
    }

    /// What is done to the broker, for a report.
    pub fn describe(&self) -> &'static str {
        match self {
            LocalRestart::RabbitMq => "rabbitmqctl stop_app / start_app",
            LocalRestart::Kafka => "SIGKILL of the broker process, then started again",
        }
    }
}

impl RestartHook for LocalRestart {
    fn retention(&self) -> Retention {
        Retention::QueuesAndMessages
    }

    fn stop(&self) -> Result<(), String> {
        match self {
            LocalRestart::RabbitMq => run(Command::new("rabbitmqctl").arg("stop_app")),
            LocalRestart::Kafka => brokers(&["kill", "kafka"]),
        }
    }

    fn start(&self) -> Result<(), String> {
        match self {
            LocalRestart::RabbitMq => run(Command::new("rabbitmqctl").arg("start_app")),
            LocalRestart::Kafka => brokers(&["up", "kafka"]),
        }
    }
}

fn brokers(args: &[&str]) -> Result<(), String> {
    let script: PathBuf = std::env::current_dir()
        .ok()
        .and_then(|dir| brokers_script(&dir))
        .ok_or_else(|| "scripts/brokers.sh was not found above the current directory".to_owned())?;
    run(Command::new("bash").arg(script).args(args))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    match command.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{shown} could not run: {e}")),
    }
}
