//! W3C Trace Context in message headers: `traceparent` and `tracestate`, written on send and
//! read on receive, so one trace follows a message across brokers and the processors that
//! move it.
//!
//! The format is W3C Trace Context level 1: `traceparent` is
//! `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>` (lowercase), and `tracestate`
//! the vendor list, carried as received. Both are plain string headers, so every backend carries
//! them as it carries any header (AMQP headers on RabbitMQ, Kafka record headers, SQS message
//! attributes, where the SQS codec gives them the first free attribute slots).
//!
//! **Where the ids come from.** With the `otel` feature and an OpenTelemetry layer installed
//! (`tracing-opentelemetry`), the ids are those of the OpenTelemetry span: the send span's own
//! ids go into the headers, and a received message's context becomes the parent of its receive,
//! process and settle spans. Without it, this module is the whole propagation: a context is
//! "current" while a future runs [`in_scope`](TraceContext::in_scope) of it (the processors do
//! that around each input), a send inside it carries the same trace id with a new span id, and
//! a send with no context and a subscriber listening starts a new trace. A message sent with no
//! context current and nothing listening is left as it is: a `traceparent` it already has (one
//! piped from another broker) goes on unchanged, and one it lacks costs nothing to not write.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::headers::Headers;

/// The header holding the trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The header holding vendor-specific trace state, passed on as received.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` passed on; W3C lets a propagator drop longer lists.
const MAX_TRACESTATE_BYTES: usize = 512;
/// The `sampled` bit of the flags.
const SAMPLED: u8 = 0x01;

/// One position in a trace: the trace id, the span that is the parent of whatever comes next,
/// the flags and the vendors' trace state.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    state: Option<Arc<str>>,
}

impl TraceContext {
    /// A context from its parts; `None` if an id is zero (W3C's invalid value).
    pub fn new(trace_id: u128, span_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags,
            state: None,
        })
    }

    /// The start of a new trace, sampled, with random ids.
    pub fn root() -> Self {
        TraceContext {
            trace_id: random_u128(),
            span_id: random_span_id(),
            flags: SAMPLED,
            state: None,
        }
    }

    /// The next step in the same trace: a new span id, the same trace id, flags and state.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: random_span_id(),
            ..self.clone()
        }
    }

    /// The same context carrying `state` as its `tracestate` (dropped if empty or too long).
    pub fn with_tracestate(mut self, state: &str) -> Self {
        let state = state.trim();
        self.state =
            (!state.is_empty() && state.len() <= MAX_TRACESTATE_BYTES).then(|| state.into());
        self
    }

    /// The trace id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The span id: the parent of the spans of whoever receives it.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the trace is sampled (the caller recorded it).
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Read a `traceparent` (and its `tracestate`); `None` if it is not valid W3C level 1.
    ///
    /// A later version is read by its first four fields, as the specification asks; version
    /// `ff`, upper-case hex and all-zero ids are refused.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let text = traceparent.trim();
        let bytes = text.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex_field(&text[0..2])? as u8;
        let exact = version == 0;
        if version == 0xff
            || (exact && bytes.len() != 55)
            || (!exact && bytes.len() > 55 && bytes[55] != b'-')
            || bytes[2] != b'-'
            || bytes[35] != b'-'
            || bytes[52] != b'-'
        {
            return None;
        }
        let trace_id = hex_field(&text[3..35])?;
        let span_id = hex_field(&text[36..52])? as u64;
        let flags = hex_field(&text[53..55])? as u8;
        let context = TraceContext::new(trace_id, span_id, flags)?;
        Some(match tracestate {
            Some(state) => context.with_tracestate(state),
            None => context,
        })
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The context a message carries in its headers, if it carries a valid one.
    pub fn extract(headers: &Headers) -> Option<Self> {
        let parent = headers.get(TRACEPARENT)?;
        TraceContext::parse(parent, headers.get(TRACESTATE))
    }

    /// Write this context into `headers`, replacing any there (`tracestate` too: a stale one
    /// from another trace must not travel on with this one).
    pub fn inject(&self, headers: &mut Headers) {
        // Both names and values are valid headers by construction, so insert cannot fail.
        let _ = headers.insert(TRACEPARENT, self.traceparent());
        match &self.state {
            Some(state) => {
                let _ = headers.insert(TRACESTATE, &**state);
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// The context code runs in now: the current span's OpenTelemetry context (with the `otel`
    /// feature, when it is valid), else the one set by [`in_scope`](Self::in_scope) or
    /// [`enter`](Self::enter), else none.
    pub fn current() -> Option<Self> {
        #[cfg(feature = "otel")]
        if let Some(context) = otel::current() {
            return Some(context);
        }
        Self::scoped()
    }

    /// A [`child`](Self::child) of the [`current`](Self::current) context, if there is one,
    /// without copying the current one first: what a send writes while nothing listens.
    pub fn current_child() -> Option<Self> {
        // The common case, nothing listening and no scope anywhere: one atomic load.
        if SCOPES.load(Ordering::Relaxed) == 0 && !tracing::dispatcher::has_been_set() {
            return None;
        }
        #[cfg(feature = "otel")]
        if let Some(context) = otel::current() {
            return Some(context.child());
        }
        SCOPE.with(|scope| scope.borrow().as_ref().map(TraceContext::child))
    }

    /// The context set by [`in_scope`](Self::in_scope) or [`enter`](Self::enter) on this
    /// thread, if any: a thread-local read, cheap enough for every send.
    pub fn scoped() -> Option<Self> {
        SCOPE.with(|scope| scope.borrow().clone())
    }

    /// Run `future` with this context current (on whichever thread polls it).
    pub fn in_scope<F: Future>(self, future: F) -> InScope<F> {
        InScope {
            context: Some(self),
            future,
        }
    }

    /// Make this context current on this thread until the guard is dropped (for synchronous
    /// code; never hold the guard across an `.await`, use [`in_scope`](Self::in_scope)).
    pub fn enter(self) -> ScopeGuard {
        SCOPES.fetch_add(1, Ordering::Relaxed);
        ScopeGuard {
            previous: SCOPE.with(|scope| scope.replace(Some(self))),
        }
    }

    /// Make this context the parent of `span`: with the `otel` feature, the span's
    /// OpenTelemetry parent (before the span is first entered; later it keeps the parent it
    /// had). Without it there is nothing to set: spans of `tracing` have no trace ids.
    pub fn set_parent_of(&self, span: &tracing::Span) {
        #[cfg(feature = "otel")]
        otel::set_parent(span, self);
        #[cfg(not(feature = "otel"))]
        let _ = span;
    }

    /// The ids of `span`'s OpenTelemetry context, if it has a valid one (only with the `otel`
    /// feature and an OpenTelemetry layer listening).
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        #[cfg(feature = "otel")]
        return otel::of_span(span);
        #[cfg(not(feature = "otel"))]
        {
            let _ = span;
            None
        }
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &format_args!("{self}"))
            .field("tracestate", &self.state)
            .finish()
    }
}

/// A hex field of at most 32 lowercase digits.
fn hex_field(text: &str) -> Option<u128> {
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

fn random_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// A random, non-zero span id (the low half of a v4 UUID always has its variant bits set).
fn random_span_id() -> u64 {
    random_u128() as u64
}

thread_local! {
    static SCOPE: RefCell<Option<TraceContext>> = const { RefCell::new(None) };
}

/// How many scopes are entered right now, on all threads: while none is, a send needs not
/// look at its thread's scope.
static SCOPES: AtomicUsize = AtomicUsize::new(0);

/// Restores the context that was current before [`TraceContext::enter`].
#[must_use = "the context is current only while the guard lives"]
pub struct ScopeGuard {
    previous: Option<TraceContext>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SCOPE.with(|scope| *scope.borrow_mut() = previous);
        SCOPES.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScopeGuard")
    }
}

pin_project_lite::pin_project! {
    /// A future run with a [`TraceContext`] current: see [`TraceContext::in_scope`].
    pub struct InScope<F> {
        context: Option<TraceContext>,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Current only while polled: another task on this thread never sees it.
        let previous = SCOPE.with(|scope| scope.replace(this.context.take()));
        SCOPES.fetch_add(1, Ordering::Relaxed);
        let _restore = Restore {
            slot: this.context,
            previous,
        };
        this.future.poll(cx)
    }
}

/// Puts the future's context back into the future and the thread's previous one back into the
/// thread, also when the poll panics.
struct Restore<'a> {
    slot: &'a mut Option<TraceContext>,
    previous: Option<TraceContext>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        *self.slot = SCOPE.with(|scope| scope.replace(previous));
        SCOPES.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F> fmt::Debug for InScope<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InScope")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "otel")]
mod otel {
    //! The bridge to OpenTelemetry's span context through `tracing-opentelemetry`.

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    pub(super) fn current() -> Option<TraceContext> {
        // No subscriber was ever set: no span can be current, and two atomic loads say so
        // faster than asking the dispatcher for its current span.
        if !tracing::dispatcher::has_been_set() {
            return None;
        }
        let span = tracing::Span::current();
        if span.is_none() {
            return None;
        }
        of_span(&span)
    }

    pub(super) fn of_span(span: &tracing::Span) -> Option<TraceContext> {
        if span.is_none() {
            return None;
        }
        let context = span.context();
        let otel_span = context.span();
        let ids = otel_span.span_context();
        if !ids.is_valid() {
            return None;
        }
        let context = TraceContext::new(
            u128::from_be_bytes(ids.trace_id().to_bytes()),
            u64::from_be_bytes(ids.span_id().to_bytes()),
            ids.trace_flags().to_u8(),
        )?;
        let state = ids.trace_state().header();
        Some(context.with_tracestate(&state))
    }

    pub(super) fn set_parent(span: &tracing::Span, context: &TraceContext) {
        if span.is_none() {
            return;
        }
        let state = context
            .tracestate()
            .and_then(|s| TraceState::from_key_value(parse_state(s)).ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from_bytes(context.trace_id().to_be_bytes()),
            SpanId::from_bytes(context.span_id().to_be_bytes()),
            TraceFlags::new(context.flags()),
            true,
            state,
        );
        // An error means the span already started (it keeps its parent) or no OpenTelemetry
        // layer listens (nothing to parent): neither is the message's fault.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    fn parse_state(state: &str) -> impl Iterator<Item = (&str, &str)> {
        state
            .split(',')
            .filter_map(|member| member.trim().split_once('='))
    }
}

#[cfg(test)]
mod tests;
