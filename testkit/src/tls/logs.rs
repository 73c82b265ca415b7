//! Every log line a test's connections write, captured to scan for secrets: a `tracing`
//! subscriber at TRACE level for every target (librdkafka's forwarded log included) installed
//! as the global default, writing into a buffer the test reads.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// The captured output (see the module docs). One per test process: the first call installs it.
#[derive(Clone, Debug, Default)]
pub struct CapturedLogs {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl CapturedLogs {
    /// The process-wide capture, installed on first use. `None` if another global subscriber
    /// was installed first (then nothing can be captured, and the caller must fail).
    pub fn install() -> Option<CapturedLogs> {
        static CAPTURE: OnceLock<Option<CapturedLogs>> = OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let logs = CapturedLogs::default();
                let subscriber = tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::TRACE)
                    .with_ansi(false)
                    .with_writer(logs.clone())
                    .finish();
                tracing::subscriber::set_global_default(subscriber)
                    .ok()
                    .map(|()| logs)
            })
            .clone()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Panic naming `what` if any of `secrets` occurs in `text` (the secret itself is not shown:
/// the panic message would leak it into the test output).
pub fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for (i, secret) in secrets.iter().enumerate() {
        assert!(
            !text.contains(secret),
            "secret #{i} ({} chars) appears in {what}",
            secret.len()
        );
    }
}
