//! A broker process a test starts and that never outlives the test process: it runs in its own
//! process group, and a watchdog (its own group too, so a signal to the test's group does not
//! take it along) stops that group and deletes the broker's directory as soon as the test
//! process is gone, whether it returned, panicked or was killed. A static broker shared by the
//! tests of one binary is therefore stopped at the end without a teardown hook.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A started broker process and its directory.
#[derive(Debug)]
pub struct Guarded {
    child: Child,
    dir: PathBuf,
}

impl Guarded {
    /// Start `command` in a group of its own, its output appended to `dir/<name>.out`, with the
    /// watchdog described in the module docs.
    pub fn spawn(mut command: Command, dir: &Path, name: &str) -> Result<Self, String> {
        let out_path = dir.join(format!("{name}.out"));
        let out = std::fs::File::create(&out_path)
            .map_err(|e| format!("creating {}: {e}", out_path.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", out_path.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {name} ({command:?}): {e}"))?;
        let watchdog = Command::new("sh")
            .arg("-c")
            // POSIX sh (dash): `kill -SIG -PGID`, no `--`, which dash's kill refuses.
            .arg(
                "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
                 kill -TERM \"-$2\" 2>/dev/null; \
                 for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 \"-$2\" 2>/dev/null || break; sleep 1; done; \
                 kill -KILL \"-$2\" 2>/dev/null; rm -rf \"$3\"",
            )
            .arg("mailroom-broker-watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let mut guarded = Guarded {
            child,
            dir: dir.to_owned(),
        };
        if let Err(e) = watchdog {
            guarded.stop();
            return Err(format!("starting the watchdog of {name}: {e}"));
        }
        Ok(guarded)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the broker's output, for an error message.
    pub fn output_tail(&self, name: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.out"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stop the process group now (SIGKILL: the data is thrown away anyway).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP port free on 127.0.0.1 right now (the OS picks it).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// A fresh directory under the system's temp dir.
pub fn fresh_dir(prefix: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Wait until `ready` holds, at most `limit`, failing early if the process ended.
pub fn await_ready(
    process: &mut Guarded,
    name: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(start.elapsed());
        }
        if !process.running() {
            return Err(format!(
                "the private {name} exited while starting; its output ends with:\n{}",
                process.output_tail(name, 30)
            ));
        }
        if start.elapsed() > limit {
            return Err(format!(
                "the private {name} was not ready within {limit:?}; its output ends with:\n{}",
                process.output_tail(name, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run `command` to completion, at most `limit` (killed after it), its output appended to
/// `dir/<name>.out`; an error with the output's tail if it fails or overruns.
pub fn run_bounded(
    mut command: Command,
    dir: &Path,
    name: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let out_path = dir.join(format!("{name}.out"));
    let out = std::fs::File::create(&out_path)
        .map_err(|e| format!("creating {}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", out_path.display()))?;
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {name} ({command:?}): {e}"))?;
    let tail = || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(start.elapsed()),
            Ok(Some(status)) => return Err(format!("{name} failed ({status}):\n{}", tail())),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} did not finish within {limit:?}:\n{}",
                    tail()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {name}: {e}")),
        }
    }
}
