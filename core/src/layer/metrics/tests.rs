//! Unit tests of the metrics layer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use metrics::{CounterFn, Gauge, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString};

use super::super::test_support::{
    acked_at_once, confirmed, delivery, everything, layered, now, Log, Stub,
};
use super::super::LayerStack;
use super::*;
use crate::consumer::MockConsumer;
use crate::delivery::TryAck;
use crate::producer::MockProducer;
use crate::ErrorKind;

#[derive(Default)]
struct Count(AtomicU64);
impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);
impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// Keeps every handle it hands out, by its name and labels.
#[derive(Default)]
struct Kept {
    counters: Mutex<Vec<(Key, Arc<Count>)>>,
    histograms: Mutex<Vec<(Key, Arc<Samples>)>>,
}

impl Recorder for Kept {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap();
        if let Some((_, c)) = counters.iter().find(|(k, _)| k == key) {
            return Counter::from_arc(c.clone());
        }
        let c = Arc::new(Count::default());
        counters.push((key.clone(), c.clone()));
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap();
        if let Some((_, h)) = histograms.iter().find(|(k, _)| k == key) {
            return Histogram::from_arc(h.clone());
        }
        let h = Arc::new(Samples::default());
        histograms.push((key.clone(), h.clone()));
        Histogram::from_arc(h)
    }
}

fn label<'a>(key: &'a Key, name: &str) -> Option<&'a str> {
    key.labels().find(|l| l.key() == name).map(|l| l.value())
}

impl Kept {
    /// The count under `name` whose labels include every pair given.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.name() == name)
            .filter(|(k, _)| labels.iter().all(|(n, v)| label(k, n) == Some(*v)))
            .map(|(_, c)| c.0.load(Ordering::SeqCst))
            .sum()
    }

    fn samples(&self, labels: &[(&str, &str)]) -> usize {
        self.histograms
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.name() == OPERATION_DURATION)
            .filter(|(k, _)| labels.iter().all(|(n, v)| label(k, n) == Some(*v)))
            .map(|(_, h)| h.0.lock().unwrap().len())
            .sum()
    }
}

fn metered(stub: Stub) -> Arc<dyn Backend> {
    let layer = MetricsLayer::new().settle_durations(true);
    layered(stub, LayerStack::new().layer(layer))
}

#[test]
fn sends_are_counted_and_timed_per_destination_with_failures_by_kind() {
    let kept = Kept::default();
    let mut producer = MockProducer::new();
    let mut turn = 0;
    producer.expect_enqueue().times(3).returning(move |_, m| {
        turn += 1;
        match turn {
            3 => Err(Error::new(ErrorKind::QueueFull, "full").with_undelivered(m)),
            _ => Ok(confirmed(&m)),
        }
    });
    producer
        .expect_enqueue_batch()
        .times(1)
        .returning(|_, messages, pending| {
            pending.extend(messages.drain(..).map(|m| Ok(confirmed(&m))));
        });
    metrics::with_local_recorder(&kept, || {
        let backend = metered(Stub::new(everything()).with_producer(producer));
        let producer = now(backend.producer()).unwrap();
        let (a, b) = (Destination::queue("a"), Destination::queue("b"));
        now(now(producer.enqueue(&a, Message::new("1"))).unwrap()).unwrap();
        now(now(producer.enqueue(&b, Message::new("2"))).unwrap()).unwrap();
        assert!(now(producer.enqueue(&a, Message::new("3"))).is_err());
        let mut batch = vec![Message::new("4"), Message::new("5")];
        let mut pending = Vec::new();
        now(producer.enqueue_batch(&a, &mut batch, &mut pending));
        assert_eq!(pending.len(), 2);
    });
    let system = ("messaging.system", "stub");
    let to_a = ("messaging.destination.name", "a");
    assert_eq!(kept.count(SENT_MESSAGES, &[system, to_a]), 4);
    assert_eq!(
        kept.count(SENT_MESSAGES, &[to_a, ("error.type", "queue full")]),
        1
    );
    assert_eq!(
        kept.count(SENT_MESSAGES, &[("messaging.destination.name", "b")]),
        1
    );
    assert_eq!(
        kept.samples(&[to_a, ("messaging.operation.type", "send")]),
        4
    );
}

#[test]
fn consumed_messages_and_settles_are_counted_and_timed() {
    let kept = Kept::default();
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_receive()
        .times(1)
        .returning(move || Ok(delivery("x", &ready)));
    let again = log.clone();
    consumer
        .expect_try_receive()
        .times(1)
        .returning(move || Some(Ok(delivery("y", &again))));
    metrics::with_local_recorder(&kept, || {
        let backend = metered(Stub::new(everything()).with_consumer(consumer));
        let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
        now(now(consumer.receive()).unwrap().ack()).unwrap();
        let d = consumer.try_receive().unwrap().unwrap();
        now(d.nack(crate::Nack::requeue())).unwrap();
    });
    let q = ("messaging.destination.name", "q");
    assert_eq!(kept.count(CONSUMED_MESSAGES, &[q]), 2);
    assert_eq!(
        kept.samples(&[q, ("messaging.operation.type", "receive")]),
        1
    );
    assert_eq!(kept.samples(&[q, ("messaging.operation.name", "ack")]), 1);
    assert_eq!(kept.samples(&[q, ("messaging.operation.name", "nack")]), 1);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[test]
fn settles_are_left_unwrapped_unless_their_durations_are_asked_for() {
    let kept = Kept::default();
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer.expect_receive().never();
    consumer
        .expect_try_receive()
        .times(1)
        .returning(move || Some(Ok(delivery("x", &ready))));
    metrics::with_local_recorder(&kept, || {
        let stack = LayerStack::new().layer(MetricsLayer::new());
        let backend = layered(Stub::new(everything()).with_consumer(consumer), stack);
        let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
        now(consumer.try_receive().unwrap().unwrap().ack()).unwrap();
    });
    let q = ("messaging.destination.name", "q");
    assert_eq!(kept.count(CONSUMED_MESSAGES, &[q]), 1);
    assert_eq!(
        kept.samples(&[q, ("messaging.operation.type", "settle")]),
        0
    );
    assert_eq!(*log.lock().unwrap(), ["ack"]);
}

/// A backend that acks at once keeps doing so through a metered settle: the ack is still
/// timed, and no boxed ack future is needed for it.
#[test]
fn an_at_once_ack_goes_through_a_metered_settle_and_is_timed() {
    let kept = Kept::default();
    let log = Log::default();
    let ready = log.clone();
    let mut consumer = MockConsumer::new();
    consumer
        .expect_try_receive()
        .times(1)
        .returning(move || Some(Ok(acked_at_once("x", &ready))));
    let acked = metrics::with_local_recorder(&kept, || {
        let backend = metered(Stub::new(everything()).with_consumer(consumer));
        let mut consumer = now(backend.consumer("q", Default::default())).unwrap();
        let (_, _, settlement) = consumer.try_receive().unwrap().unwrap().into_parts();
        settlement.try_ack()
    });
    assert!(matches!(acked, TryAck::Done(Ok(()))), "not acked at once");
    let q = ("messaging.destination.name", "q");
    assert_eq!(kept.samples(&[q, ("messaging.operation.name", "ack")]), 1);
    assert_eq!(*log.lock().unwrap(), ["try_ack"]);
}
