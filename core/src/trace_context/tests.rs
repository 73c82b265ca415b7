//! Unit tests of the W3C trace context.

use super::*;

const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn the_w3c_example_round_trips() {
    let context = TraceContext::parse(EXAMPLE, Some("rojo=00f067aa0ba902b7")).unwrap();
    assert_eq!(context.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(context.span_id(), 0x00f067aa0ba902b7);
    assert!(context.is_sampled());
    assert_eq!(context.traceparent(), EXAMPLE);
    assert_eq!(context.to_string(), EXAMPLE);
    assert_eq!(context.tracestate(), Some("rojo=00f067aa0ba902b7"));
}

#[test]
fn invalid_traceparents_are_refused() {
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        // upper case
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        // zero ids
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        // version ff, and version 00 with extra fields
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        // wrong separators, signs
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
    }
    // A later version is read by its first four fields.
    let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
    assert_eq!(
        TraceContext::parse(later, None).unwrap().trace_id(),
        0x4bf92f3577b34da6a3ce929d0e0e4736
    );
}

#[test]
fn a_child_keeps_the_trace_and_takes_a_new_span_id() {
    let root = TraceContext::root();
    assert!(root.is_sampled());
    let child = root.child();
    assert_eq!(child.trace_id(), root.trace_id());
    assert_ne!(child.span_id(), root.span_id());
    assert_ne!(TraceContext::root().trace_id(), root.trace_id());
}

#[test]
fn inject_replaces_the_context_and_drops_a_stale_tracestate() {
    let mut headers = Headers::new();
    headers.insert("a", "1").unwrap();
    headers.insert(TRACESTATE, "old=1").unwrap();
    let context = TraceContext::parse(EXAMPLE, None).unwrap();
    context.inject(&mut headers);
    assert_eq!(headers.get(TRACEPARENT), Some(EXAMPLE));
    assert_eq!(headers.get(TRACESTATE), None);
    assert_eq!(TraceContext::extract(&headers), Some(context.clone()));
    let with_state = context.with_tracestate("congo=t61rcWkgMzE");
    with_state.inject(&mut headers);
    assert_eq!(headers.get(TRACESTATE), Some("congo=t61rcWkgMzE"));
    assert_eq!(headers.get("a"), Some("1"));
}

#[tokio::test]
async fn a_scope_is_current_only_while_its_future_is_polled() {
    assert_eq!(TraceContext::current(), None);
    let context = TraceContext::root();
    let inner = context.clone();
    let seen = context
        .clone()
        .in_scope(async move {
            let before = TraceContext::current();
            tokio::task::yield_now().await;
            (before, TraceContext::current(), inner)
        })
        .await;
    assert_eq!(seen.0.as_ref(), Some(&seen.2));
    assert_eq!(seen.1.as_ref(), Some(&seen.2));
    assert_eq!(TraceContext::current(), None);
    {
        let _guard = context.clone().enter();
        assert_eq!(TraceContext::current(), Some(context));
    }
    assert_eq!(TraceContext::current(), None);
}
