//! The runtime lapin's connections run on: tokio's, with lapin's dumps of message contents kept
//! out of the application's logs.
//!
//! lapin logs a returned message (an unroutable or missing-queue publish under the mandatory
//! flag) whole at `warn`, header values and payload bytes included, and every received frame at
//! `trace`. Both are logged on the connection's own I/O thread, which lapin starts and which
//! first calls this runtime's `block_on`: there, the thread's default subscriber becomes the
//! application's own behind a filter that drops those events and passes everything else.
//! `confirm.rs` logs what identifies a returned message instead.

use std::cell::Cell;
use std::future::Future;

use async_rs::traits::Executor;
use async_rs::util::{RuntimeParts, Task};
use async_rs::{Runtime, Tokio};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{span, Dispatch, Event, Level, Metadata, Subscriber};

/// The runtime handed to lapin for every connection.
pub(crate) type LapinRuntime = Runtime<RuntimeParts<Quiet, Tokio>>;

/// Tokio's runtime for the current tokio context, or `None` outside one.
pub(crate) fn runtime() -> Option<LapinRuntime> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let tokio = Tokio::default().with_handle(handle);
    Some(Runtime::new(RuntimeParts::new(Quiet(tokio.clone()), tokio)))
}

/// Tokio's executor, whose `block_on` first puts the content filter on the calling thread.
#[derive(Clone, Debug)]
pub(crate) struct Quiet(Tokio);

impl Executor for Quiet {
    type Task<T: Send + 'static> = <Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        filter_this_thread();
        self.0.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn_blocking(f)
    }
}

thread_local! {
    static FILTERED: Cell<bool> = const { Cell::new(false) };
}

/// Make the filter this thread's default subscriber, for the rest of the thread's life (lapin
/// calls `block_on` only on the I/O thread it starts per connection, again on each reconnect).
fn filter_this_thread() {
    if FILTERED.with(|f| f.replace(true)) {
        return;
    }
    let inner = tracing::dispatcher::get_default(Dispatch::clone);
    let filter = WithoutContents {
        inner,
        max_level: LevelFilter::current(),
    };
    // The guard would restore the previous default when dropped; the thread keeps the filter
    // until it ends, and its thread-local state goes with it.
    std::mem::forget(tracing::dispatcher::set_default(&Dispatch::new(filter)));
}

/// Whether an event of this callsite carries message contents: lapin's returned-message
/// warning, or one of its frame dumps.
fn carries_contents(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    if !target.starts_with("lapin") || !metadata.is_event() {
        return false;
    }
    (target == "lapin::returned_messages" && *metadata.level() == Level::WARN)
        || metadata.fields().field("frame").is_some()
        || metadata.fields().field("frames").is_some()
}

/// The application's subscriber without the events that carry message contents.
struct WithoutContents {
    inner: Dispatch,
    max_level: LevelFilter,
}

impl Subscriber for WithoutContents {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if carries_contents(metadata) {
            Interest::never()
        } else {
            self.inner.register_callsite(metadata)
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        !carries_contents(metadata) && self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max_level)
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.inner.record(span, values)
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.inner.record_follows_from(span, follows)
    }

    fn event(&self, event: &Event<'_>) {
        if !carries_contents(event.metadata()) {
            self.inner.event(event)
        }
    }

    fn enter(&self, span: &span::Id) {
        self.inner.enter(span)
    }

    fn exit(&self, span: &span::Id) {
        self.inner.exit(span)
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.inner.try_close(id)
    }
}
