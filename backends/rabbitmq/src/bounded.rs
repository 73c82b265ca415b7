//! The bound on every wait on the broker.
//!
//! A broker that restarts can come back half-way: a connection it accepted and then never
//! answers, a method it never replies to, a confirm that never comes. So each request/reply
//! method goes through [`Connection::answer`], which waits at most the connect timeout (less
//! when the operation's budget, its [`Deadline`]: the reconnect timeout counted from when the
//! operation began, is nearly spent). A connection that leaves a method unanswered for a whole
//! connect timeout is given up (`Connection::give_up`): it is closed, and every producer and
//! consumer on it moves to a new one. An operation whose budget runs out fails with a
//! temporary `Timeout` or `Connection` error ([`Connection::gave_up`]); a send hands its message
//! back.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mailroom_core::{Error, ErrorKind};
use tokio::time::Instant;

use crate::connection::{Connection, Link};
use crate::error::is_connection_loss;
use crate::BACKEND;

/// The end of one operation's budget: the reconnect timeout, counted from when it began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}

/// Why a step on the broker did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The broker refused it (a protocol error on a working connection): report it as it is.
    Refused(lapin::Error),
    /// The connection broke, or did not answer in time: another try may work.
    Lost(Lost),
}

/// A step lost to its connection: what happened, and whether it was silence (no answer in
/// time) rather than a broken connection, which decides the kind of the final error.
#[derive(Debug)]
pub(crate) struct Lost {
    pub why: String,
    pub silent: bool,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

impl Connection {
    /// The budget of an operation that begins now.
    pub fn deadline(&self) -> Deadline {
        Deadline(Instant::now() + self.config.reconnect_timeout())
    }

    /// How long one step may wait for the broker: the connect timeout, or what is left of the
    /// operation's budget if that is less.
    pub fn step_wait(&self, deadline: Deadline) -> Duration {
        self.config.connect_timeout().min(deadline.remaining())
    }

    /// Await one request to the broker on `live`, bounded by [`Connection::step_wait`].
    ///
    /// A connection that leaves the request unanswered for the whole connect timeout is given
    /// up (the broker accepted it and went quiet: booting, frozen, or a stalled path), so the
    /// next try opens a new one. A wait cut short by the operation's budget gives nothing up:
    /// the caller is out of time, not the connection.
    pub async fn answer<T>(
        &self,
        live: &Arc<Link>,
        deadline: Deadline,
        what: &str,
        request: impl Future<Output = lapin::Result<T>>,
    ) -> std::result::Result<T, Failure> {
        let wait = self.step_wait(deadline);
        tokio::select! {
            // An answer that is already there wins over a connection given up at that moment.
            biased;
            answered = tokio::time::timeout(wait, request) => match answered {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) if is_connection_loss(&e) => {
                    self.forget(live);
                    Err(Failure::Lost(Lost { why: format!("{what}: {e}"), silent: false }))
                }
                Ok(Err(e)) => Err(Failure::Refused(e)),
                Err(_) => {
                    if wait >= self.config.connect_timeout() {
                        self.give_up(live, what, wait);
                    }
                    Err(Failure::Lost(Lost {
                        why: format!("RabbitMQ did not answer {what} within {wait:?}"),
                        silent: true,
                    }))
                }
            },
            () = live.retired() => Err(Failure::Lost(Lost {
                why: format!("{what}: the connection was given up"),
                silent: false,
            })),
        }
    }

    /// The error for an operation whose budget ran out, the last failure as its cause.
    pub fn gave_up(&self, operation: &'static str, last: &Lost) -> Error {
        let kind = if last.silent {
            ErrorKind::Timeout
        } else {
            ErrorKind::Connection
        };
        Error::new(
            kind,
            format!(
                "gave up on {operation} at {} after the reconnect timeout ({:?}); last: {last}",
                self.config.display_target(),
                self.config.reconnect_timeout()
            ),
        )
        .with_backend(BACKEND)
        .with_operation(operation)
    }
}

/// Wait at most `wait` for the broker to answer a close (of a connection or a channel).
///
/// Why: lapin's close future resolves on the broker's CloseOk, so a broker that went silent
/// without hanging up (a frozen host, a stalled path, and no heartbeat yet) held `close`
/// forever. Giving up drops the handle; the broker requeues whatever was unacked on it once it
/// notices the connection is gone, so nothing is lost.
pub(crate) async fn close_within(
    wait: Duration,
    what: &str,
    close: impl Future<Output = lapin::Result<()>>,
) {
    if tokio::time::timeout(wait, close).await.is_err() {
        tracing::warn!(
            backend = BACKEND,
            ?wait,
            "no answer to the {what} close in time; dropping it"
        );
    }
}
