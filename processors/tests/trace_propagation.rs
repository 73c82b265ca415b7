//! A pipeline's outputs continue their input's trace: a new output message gets a child of the
//! W3C context its input carried (same trace id, a new span id), an output that carries its own
//! context keeps it, and an untraced input's output gets none.

use std::sync::Arc;

use mailroom_core::{Backend, Message, TraceContext};
use mailroom_memory::MemoryBackend;
use mailroom_processors::{Batch, Pipeline, TestDriver};

const INPUT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traced(payload: &str, traceparent: &str) -> Message {
    Message::builder(payload.to_owned())
        .header("traceparent", traceparent)
        .build()
        .unwrap()
}

fn context(m: &Message) -> Option<TraceContext> {
    TraceContext::extract(m.headers())
}

#[tokio::test(start_paused = true)]
async fn a_new_output_message_continues_its_inputs_trace() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let mut d = TestDriver::new(backend, &["in", "out"]).await.unwrap();
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        // A new message: none of the input's headers travel with it.
        .map("upper", |m: Message| {
            Message::new(String::from_utf8_lossy(m.payload()).to_uppercase())
        })
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    d.pipe("in", traced("a", INPUT_TRACE)).await.unwrap();
    d.pipe("in", Message::new("untraced")).await.unwrap();
    d.run_until_idle().await;
    d.shutdown().await.unwrap();

    let out = d.read("out").await.unwrap();
    assert_eq!(out.len(), 2);
    let input = TraceContext::parse(INPUT_TRACE, None).unwrap();
    let traced_out = out.iter().find(|m| m.payload().as_ref() == b"A").unwrap();
    let carried = context(traced_out).expect("the output carries a trace context");
    assert_eq!(carried.trace_id(), input.trace_id(), "same trace");
    assert_ne!(
        carried.span_id(),
        input.span_id(),
        "a child, not the input's span"
    );
    let untraced_out = out
        .iter()
        .find(|m| m.payload().as_ref() == b"UNTRACED")
        .unwrap();
    assert!(context(untraced_out).is_none(), "nothing invented");
}

#[tokio::test(start_paused = true)]
async fn an_output_with_its_own_context_keeps_it() {
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let mut d = TestDriver::new(backend, &["in", "out"]).await.unwrap();
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .map("own", move |_m: Message| traced("b", own))
        .to(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    d.pipe("in", traced("a", INPUT_TRACE)).await.unwrap();
    d.run_until_idle().await;
    d.shutdown().await.unwrap();
    let out = d.read("out").await.unwrap();
    assert_eq!(out[0].headers().get("traceparent"), Some(own));
}

#[tokio::test(start_paused = true)]
async fn a_batch_continues_its_first_inputs_trace() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let mut d = TestDriver::new(backend, &["in", "out"]).await.unwrap();
    let pipeline = Pipeline::builder()
        .source(d.consumer("in").await.unwrap())
        .flow()
        .map("fresh", |m: Message| Message::new(m.payload().to_vec()))
        .batch("two", Batch::count(2))
        .to_batched(d.sink("out"))
        .unwrap();
    d.start(pipeline);
    d.pipe("in", traced("a", INPUT_TRACE)).await.unwrap();
    d.pipe("in", Message::new("b")).await.unwrap();
    d.run_until_idle().await;
    d.shutdown().await.unwrap();
    let out = d.read("out").await.unwrap();
    assert_eq!(out.len(), 2);
    let input = TraceContext::parse(INPUT_TRACE, None).unwrap();
    for m in &out {
        let carried = context(m).expect("every message of the batch carries the context");
        assert_eq!(carried.trace_id(), input.trace_id());
    }
}
